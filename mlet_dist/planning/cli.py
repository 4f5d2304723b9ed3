"""mlet-plan: an MLET-aware TorchRec sharding plan, made offline (no GPUs, no process group).

    mlet-plan --spec sharding_plans/specs/criteo_terabyte.json --world 2x8 --device cuda --hbm-gb 80 \\
        -k 64 -d 16 --out sharding_plans/criteo_terabyte_2x8_h100.json

writes the plan (JSON, loadable by ``mlet-train --plan``) and a per-rank table next to it
(``.txt``); the table is printed too.
"""

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from mlet_dist.cli_common import given_dests
from mlet_dist.config_flags import SHAPE, DefaultsHelpFormatter, add_flags, tree_from_flags, written_paths
from mlet_dist.distributed.sharding import SHARDING_CHOICES
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.planning.estimators import DENSE_OPTIMIZER_STATES
from mlet_dist.planning.spec import SpecError, load_table_spec
from mlet_dist.planning.topology import DEVICES, TopologyError, cluster_spec, parse_world
from mlet_dist.training.optim import CPU_TABLE_UPDATES, EMBEDDING_OPTIMIZERS


def _world(text: str) -> str:
    try:
        parse_world(text)
    except TopologyError as err:
        raise argparse.ArgumentTypeError(str(err))
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlet-plan",
        description="Plan how to shard MLET (or baseline) DLRM embedding tables over a cluster, offline. "
        "Writes a TorchRec plan as JSON (for mlet-train --plan) and a per-rank table of memory and cost.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="plan the model of a training run: its config.json (model shape, optimizers, batch size, "
        "sharding and --spec default to the run's); the model flags below must then be left out",
    )
    p.add_argument(
        "--spec",
        type=Path,
        default=None,
        help="table sizes: a data_prep meta.json (or its dataset dir), or a spec file "
        '{"table_sizes": {...}, "dense_features": 13}',
    )
    p.add_argument("--world", type=_world, required=True, help="NxM: N nodes x M ranks per node, e.g. 2x8")
    p.add_argument("--device", choices=DEVICES, default="cuda", help="the devices the tables are placed on")
    p.add_argument("--hbm-gb", type=float, default=None, help="GPU memory per device in GiB (cuda; e.g. 80)")
    p.add_argument(
        "--ddr-gb",
        type=float,
        default=None,
        help="host memory per rank in GiB (the table memory for --device cpu; TorchRec's 128 if omitted)",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="plan JSON to write")
    p.add_argument("--table", type=Path, default=None, help="per-rank text table (default: --out with .txt)")
    add_flags(p, ModelConfig, groups=(SHAPE,))  # the model flags, as mlet-train declares them
    p.add_argument(
        "--embedding-optimizer",
        choices=sorted(EMBEDDING_OPTIMIZERS),
        default="rowwise_adagrad",
        help="fused table optimizer (sets the optimizer-state bytes)",
    )
    p.add_argument(
        "--cpu-table-update",
        choices=list(CPU_TABLE_UPDATES),
        default="jit",
        help="mlet-train's --cpu-table-update (loop: 8 B more optimizer state per row on CPU)",
    )
    p.add_argument(
        "--dense-optimizer",
        choices=sorted(DENSE_OPTIMIZER_STATES),
        default="adam",
        help="optimizer of MLPs and projections (adam keeps 2 state copies)",
    )
    p.add_argument(
        "--projection-after-comm",
        action="store_true",
        help="plan for mlet-train --projection-after-comm (projections as dense DDP params)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="per-rank batch size (buffers and cost)")
    p.add_argument("--sharding", choices=SHARDING_CHOICES, default="auto", help="force one sharding type")
    p.add_argument(
        "--cw-shard-dim",
        type=int,
        default=None,
        help="column-wise shard width; column-wise is offered when it cuts a table into >= 2 "
        "shards (TorchRec's default width 128 needs k >= 256)",
    )
    p.add_argument("--allow-uvm", action="store_true", help="let tables spill to host memory (UVM caching)")
    p.add_argument(
        "--no-memory-balance",
        action="store_true",
        help="keep TorchRec's perf-only placement (default: re-place the chosen shards for the "
        "lowest per-GPU HBM peak within 2%% of its perf estimate)",
    )
    p.add_argument("--reserve-pct", type=float, default=15.0, help="HBM safety margin kept free, percent")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the table")
    return p


# Beside the model's flags, the training settings a run's config.json also decides.
_FROM_CONFIG = (
    "embedding_optimizer",
    "cpu_table_update",
    "dense_optimizer",
    "projection_after_comm",
    "batch_size",
    "sharding",
)


def _model_and_config(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> ModelConfig:
    """The model to plan: from the model flags, or from a run's config.json (``--config``), which
    then also sets the training settings in ``args``: the plan fits the model that run trains,
    whatever its flags were called. A model flag given beside ``--config`` is a conflict."""
    if args.config is None:
        return tree_from_flags(ModelConfig, args, groups=(SHAPE,))
    from mlet_dist.config_io import load_config
    from mlet_dist.training.config import TrainConfig

    given = given_dests(build_parser, argv)
    clash = sorted(given & (set(written_paths(ModelConfig, groups=(SHAPE,))) | set(_FROM_CONFIG)))
    if clash:
        raise ValueError(f"--config sets the model; leave out {', '.join('--' + c.replace('_', '-') for c in clash)}")
    cfg = load_config(TrainConfig, args.config)
    args.embedding_optimizer, args.dense_optimizer = cfg.optim.embedding_optimizer, cfg.optim.dense_optimizer
    args.cpu_table_update = cfg.optim.cpu_table_update
    args.projection_after_comm = not cfg.sharding.owner_projection
    args.batch_size, args.sharding = cfg.batch_size, cfg.sharding.sharding
    if args.spec is None:
        args.spec = cfg.data
    return cfg.model


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mlet_dist.planning.plan_io import save_plan
    from mlet_dist.planning.planner import PlanDoesNotFitError, PlanRequest, plan_tables, uses_table_loop
    from mlet_dist.planning.report import estimates, format_report

    try:
        model = _model_and_config(args, argv)
        if args.spec is None:
            raise ValueError("--spec is required (or --config RUN/config.json, which names the run's dataset)")
        spec = load_table_spec(args.spec)
        cluster = cluster_spec(args.world, args.device, args.hbm_gb, args.ddr_gb)
        request = PlanRequest(
            spec=spec,
            cluster=cluster,
            model=model,
            owner_projection=not args.projection_after_comm,
            embedding_optimizer=args.embedding_optimizer,
            cpu_table_update=args.cpu_table_update,
            dense_optimizer=args.dense_optimizer,
            batch_size=args.batch_size,
            sharding=args.sharding,
            cw_shard_dim=args.cw_shard_dim,
            allow_uvm=args.allow_uvm,
            reserve_fraction=args.reserve_pct / 100.0,
            memory_balance=not args.no_memory_balance,
        )
        result = plan_tables(request)
    except (SpecError, TopologyError, PlanDoesNotFitError, ValueError) as err:
        print(f"mlet-plan: error: {err}", file=sys.stderr)
        return 2

    est = estimates(result)
    command = "mlet-plan " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    save_plan(
        args.out,
        result.plan,
        cluster.as_dict(),
        made_by={
            "command": command,
            "spec": {
                "name": spec.name,
                "source": str(args.spec),
                "tables": len(spec.table_sizes),
                "rows": spec.total_rows,
                "dense_features": spec.num_dense,
            },
            "model": {
                "mlet": request.mlet,
                "inner_dim": request.inner_dim,
                "embedding_dim": request.embedding_dim,
                "owner_projection": request.sharding_config.owner_projection,
            },
            "optimizers": {
                "embedding": request.embedding_optimizer,
                "dense": request.dense_optimizer,
                # recorded where it changes the bytes (CPU loop states), so older plans read the same
                **({"cpu_table_update": "loop"} if uses_table_loop(request) else {}),
            },
            "batch_size_per_rank": request.batch_size,
            "reserve_fraction": request.reserve_fraction,
            "memory_balance": request.memory_balance,
        },
        estimates=est,
    )
    text = format_report(result, est)
    table_path = args.table or args.out.with_suffix(".txt")
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(text)
    if not args.quiet:
        print(text, end="")
    print(
        f"planned {cluster.shape} {cluster.device} in {result.seconds:.1f} s ({result.proposals} proposals); "
        f"wrote {args.out} and {table_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

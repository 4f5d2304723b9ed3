"""Step-by-step probe of the first training steps of a DLRM run (issue 20: dead MLET runs at small d).

Builds the model exactly as mlet-train does (same flags, fused rowwise Adagrad on the sharded
tables, 1 gloo rank), trains with the plain loop and records, every ``--every`` steps:
the pooled embedding norm, the gradient norm that reaches the embeddings, the dot-interaction
size, the share of top-MLP units alive in the last hidden layer, the share of bottom-MLP output units
alive (issue 28: all d dead cuts the dense features off), the logit spread, the loss.

    python reports/small_d/probe.py --out probe.jsonl --steps 200 -- --data DIR --model mlet -k 64 -d 4 ...

Everything after ``--`` is mlet-train's flags (the run dir is only used for its config).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharding import shard_model  # noqa: E402
from mlet_dist.models.ranking import model_factory  # noqa: E402
from mlet_dist.training.config import parse_args  # noqa: E402
from mlet_dist.training.optim import attach_fused_embedding_optimizer, build_optimizer  # noqa: E402


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=5)
    args = p.parse_args(argv[:split])
    cfg = parse_args(argv[split + 1 :])
    env = init_distributed("gloo")
    meta = DatasetMeta.load(cfg.data)
    build = model_factory(cfg.model, meta.table_sizes, len(meta.dense_features), meta.pooling)
    torch.manual_seed(cfg.seed + env.rank)
    model = build(torch.device("meta"))
    attach_fused_embedding_optimizer(model, cfg.optim, env.device.type)
    sharded = shard_model(model, env, cfg.sharding)
    optimizer = build_optimizer(sharded, cfg.optim)
    dlrm = sharded.module.model
    seen: Dict[str, torch.Tensor] = {}

    def keep_sparse(_m, _i, out: torch.Tensor) -> None:  # B x F x d pooled embeddings
        if out.requires_grad:
            out.retain_grad()
        seen["e"] = out

    def keep_dense(_m, _i, out: torch.Tensor) -> None:  # B x d bottom-MLP output
        seen["x"] = out

    def keep_inter(_m, _i, out: torch.Tensor) -> None:  # B x (d + F+1 choose 2)
        seen["inter"] = out

    def keep_hidden(_m, _i, out: torch.Tensor) -> None:  # last hidden ReLU layer of the top MLP
        seen["h"] = out

    def keep_logit(_m, _i, out: torch.Tensor) -> None:
        seen["logit"] = out

    dlrm.sparse_arch.register_forward_hook(keep_sparse)
    dlrm.dense_arch.register_forward_hook(keep_dense)
    dlrm.inter_arch.register_forward_hook(keep_inter)
    dlrm.over_arch.model[0].register_forward_hook(keep_hidden)
    dlrm.over_arch.register_forward_hook(keep_logit)
    stream = ParquetBatchStream(
        cfg.data,
        "train",
        cfg.batch_size,
        env.rank,
        env.world_size,
        drop_last=True,
        shuffle=cfg.input.shuffle,
        seed=cfg.seed,
        prefetch=0,
    )
    rows: List[Dict[str, float]] = []
    step = 0
    epoch = 0
    sharded.train()
    out = args.out if env.rank == 0 else args.out.with_suffix(f".rank{env.rank}.jsonl")
    with out.open("w") as fh:
        while step < args.steps:
            for loaded in stream.iter_from(0, epoch):
                optimizer.zero_grad()
                loss, _ = sharded(loaded.batch)
                loss.backward()
                if step % args.every == 0 or step < 5:
                    e, x, inter, h = seen["e"], seen["x"], seen["inter"], seen["h"]
                    d = x.shape[1]
                    row = {
                        "step": step,
                        "loss": float(loss),
                        "e_rms": _rms(e),
                        "e_norm": float(e.detach().norm(dim=2).mean()),
                        "x_norm": float(x.detach().norm(dim=1).mean()),
                        "dot_rms": _rms(inter[:, d:]),
                        "e_grad_rms": _rms(e.grad) if e.grad is not None else float("nan"),
                        "alive_units": float((h.detach() > 0).any(dim=0).float().mean()),
                        # share of the d bottom-MLP output units nonzero for some row (0: dense features cut off)
                        "dense_alive": float((x.detach() != 0).any(dim=0).float().mean()),
                        "logit_std": float(seen["logit"].detach().std()),
                    }
                    rows.append(row)
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                optimizer.step()
                if step == 0:  # the first fused step, seen in the output space: e(after) - e(before), same batch
                    e0 = seen["e"].detach().clone()
                    with torch.no_grad():
                        sharded(loaded.batch)
                    delta = (seen["e"] - e0).pow(2).mean(dim=(0, 2)).sqrt()  # per feature, rms per element
                    first = {
                        "step": 0,
                        "first_step_delta_rms_median": float(delta.median()),
                        "first_step_delta_rms_mean": float(delta.mean()),
                        "first_step_delta_rms_per_feature": [round(float(x), 4) for x in delta],
                    }
                    fh.write(json.dumps(first) + "\n")
                step += 1
                if step >= args.steps:
                    break
            epoch += 1
    shutdown_distributed()


if __name__ == "__main__":
    main()

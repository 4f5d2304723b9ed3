"""Criteo-Kaggle scale rehearsal (issue 26): the whole path, stage by stage, at Kaggle's row count and
per-feature cardinalities (Zipf ids), each stage timed with its peak RSS, into a JSON and a README.

    python benchmarks/scale_rehearsal.py                       # full size: 45.8M rows, 33.76M table rows
    python benchmarks/scale_rehearsal.py --fraction 0.01       # rows and table sizes x 0.01
    make scale-rehearsal SCALE_ARGS="--fraction 0.1"

Stages (every command is the one a user runs, a fresh process tree sampled for RSS every 20 ms):

* prep: raw TSV (``mlet-prep synthetic --format criteo-tsv``), then ``mlet-prep criteo-kaggle`` on
  all cores: wall, MB/s, peak RSS, the vocabulary sizes it found;
* plan: ``mlet-plan`` for --world ranks (``--device cpu --ddr-gb``) per model; ``ranks`` puts each
  rank's planned bytes (its ``training_total``) beside the measured peak RSS of that rank training;
* train: MLET 64->16, baseline d=16 and d=64, --steps steps at --batch-size per rank, on the
  Kaggle-size tables and on tables capped at --small-table-rows: samples/s and peak RSS per rank;
* checkpoint: sync save, async save (staging and total) and a load of the MLET model on the plan
  (a torchrun job of this script): seconds, GB, GB/s;
* collapse: ``mlet-collapse`` of the MLET run: seconds, GB/s of k-wide tables read, beside this
  machine's copy bandwidth measured in the same run;
* export: ``mlet-export`` fp32/fp16/int8: size, load seconds, predict latency p50/p99 per batch;
* checkpoint.kill9: MLET trained 3x--kill-every steps with a checkpoint every --kill-every, the
  whole torchrun tree SIGKILLed while step 2x--kill-every is being written, resumed, and every
  step's loss and the end val/test metrics compared with an uninterrupted run (exact equality);
* epoch: MLET 64->16 at Kaggle table sizes on the plan: --epoch-steps, val/test AUC and NE on
  --epoch-eval-batches batches, and a whole Kaggle epoch's time extrapolated from samples/s.
  --prep-fraction runs the prep stage on fewer rows (its whole time extrapolated from its rate):
  on a shared 2-core box raw TSV is written at ~3 MB/s, an hour for Kaggle's 11 GB.

--ci is the test suite's run (tests/test_scale_rehearsal.py, under 2 minutes at a tiny --fraction):
every two-rank job starts torch and TorchRec again (tens of seconds each under load), so one MLET
run on the plan (3x--kill-every steps, a checkpoint every --kill-every) stands for the train stage's
full-tables run, the epoch stage and the kill -9 stage's uninterrupted run, and the small-tables
training is not run. kaggle.json says so where each would be ("reused_from", "skipped"); a run
without --ci runs every one of them.

The synthetic labels are independent of the features: AUC ~0.5 and NE ~1 are the expected values
(the epoch stage measures time and memory, not model quality).
Timings on a shared machine are upper bounds; peak RSS figures hold regardless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from rss_sampler import RssSampler  # noqa: E402

KAGGLE_ROWS = 45_840_617
STAGES = ("prep", "plan", "train", "checkpoint", "collapse", "export", "epoch")
MODELS = {  # name -> mlet-train / mlet-plan flags
    "mlet_k64_d16": ["--model", "mlet", "--inner-dim", "64", "--embedding-dim", "16"],
    "baseline_d16": ["--model", "baseline", "--embedding-dim", "16"],
    "baseline_d64": ["--model", "baseline", "--embedding-dim", "64"],
}
HEADLINE = "mlet_k64_d16"
GB = 1e9
TSV_BYTES_PER_ROW = 260  # measured on mlet-prep's synthetic criteo-tsv: disk estimate only


class StageFailed(RuntimeError):
    pass


REFERENCE = f"train.{HEADLINE}.full_tables"  # where --ci's one MLET run is reported


def ci_shortcuts(args: argparse.Namespace) -> Dict[str, str]:
    """The runs --ci does not make, each with what kaggle.json says in its place (empty without --ci:
    the full rehearsal runs every stage)."""
    if not args.ci:
        return {}
    return {
        "small_tables": "skipped (--ci): tables capped at --small-table-rows are not trained",
        "epoch": REFERENCE,
        "kill9_uninterrupted": REFERENCE,
    }


def kaggle_table_sizes(fraction: float) -> List[int]:
    from data_prep.generate.synthetic import TABLE_SIZE_PRESETS

    return [max(1, round(n * fraction)) for n in TABLE_SIZE_PRESETS["criteo-kaggle"]]


def tool(name: str) -> str:
    """A console script of this venv (the PATH a user gets from `make setup`)."""
    return str(Path(sys.executable).parent / name)


def run_measured(cmd: Sequence[str], log: Path) -> Dict[str, Any]:
    """Run ``cmd`` as a fresh process tree: wall seconds, CPU seconds of the tree (steadier than wall
    seconds on a shared box), peak RSS of the tree, peak per rank (a torchrun worker's RANK).
    A failure raises StageFailed with the tail of its output."""
    import resource

    cpu_before = _children_cpu_seconds(resource)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        with RssSampler(proc.pid, children=True, interval_s=0.02, label_env="RANK") as rss:
            code = proc.wait()
        seconds = time.perf_counter() - started
    if code != 0:
        raise StageFailed(f"{' '.join(map(str, cmd[:3]))} ... exit {code}: {log.read_text()[-2000:]}")
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(_children_cpu_seconds(resource) - cpu_before, 2),
        "peak_rss_bytes": rss.peak,
        "rank_peaks": rss.peak_by_label(),
    }


def _children_cpu_seconds(resource: Any) -> float:
    """User + system seconds of this process's finished children (and theirs, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def table_bytes(sizes: Sequence[int], width: int) -> int:
    return sum(sizes) * width * 4


def check_room(args: argparse.Namespace, sizes: Sequence[int], rows: int) -> Dict[str, Any]:
    """Disk and memory the run needs, against what is free now: one error line if it cannot fit."""
    import psutil

    k64 = table_bytes(sizes, 64)
    disk_needed = rows * TSV_BYTES_PER_ROW * 2 + 3 * k64 + 2 * GB  # TSV + parquet, checkpoints, serving
    per_rank = k64 / args.world * 1.3 + 1.0 * GB  # largest rank's share (skewed), process overhead
    mem_needed = per_rank * args.world + 3 * GB
    args.workdir.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(args.workdir).free
    available = psutil.virtual_memory().available
    room = {
        "disk_needed_bytes": int(disk_needed),
        "disk_free_bytes": free_disk,
        "memory_needed_bytes": int(mem_needed),
        "memory_available_bytes": available,
    }
    if disk_needed > free_disk:
        raise SystemExit(
            f"error: about {disk_needed / GB:.1f} GB of disk needed under {args.workdir}, "
            f"{free_disk / GB:.1f} GB free: lower --fraction or pick another --workdir"
        )
    if mem_needed > available:
        raise SystemExit(
            f"error: about {mem_needed / GB:.1f} GB of memory needed (peak + 3 GB), "
            f"{available / GB:.1f} GB available now: lower --fraction"
        )
    return room


def stage_prep(args: argparse.Namespace, sizes: List[int], rows: int) -> Dict[str, Any]:
    tsv, out = args.workdir / "kaggle.tsv", args.workdir / "prepared"
    gen = run_measured(synthetic_command(tsv, rows, sizes, "--format", "criteo-tsv"), args.workdir / "prep_tsv.log")
    prep = run_measured(
        [tool("mlet-prep"), "criteo-kaggle", str(tsv), str(out), "--overwrite", "--no-progress"],
        args.workdir / "prep.log",
    )
    meta = json.loads((out / "meta.json").read_text())
    size = tsv.stat().st_size
    result = {
        "tsv": {"rows": rows, "bytes": size, **_plain(gen)},
        "criteo_kaggle": {
            **_plain(prep),
            "mb_per_s": round(size / 1e6 / prep["seconds"], 2),
            "workers": os.cpu_count(),
            "vocabulary_sizes": meta["table_sizes"],
            "vocabulary_total": sum(meta["table_sizes"].values()),
            "parquet_bytes": dir_bytes(out),
        },
    }
    result["criteo_kaggle"]["all_rows_seconds_extrapolated"] = round(
        prep["seconds"] * KAGGLE_ROWS * args.fraction / rows, 1
    )
    if not args.keep:
        tsv.unlink()
        shutil.rmtree(out)
    return result


def _plain(measured: Dict[str, Any]) -> Dict[str, Any]:
    return {key: measured[key] for key in ("seconds", "cpu_seconds", "peak_rss_bytes")}


def training_data(
    args: argparse.Namespace, sizes: List[int], name: str, steps: int, rows: Optional[int] = None
) -> Path:
    """A parquet dataset with the given tables and rows enough for --steps global batches
    (train is 6/7 of the rows) and a few eval batches, or exactly ``rows`` rows."""
    data = args.workdir / name
    if rows is None:
        rows = int(steps * args.batch_size * args.world * 7 / 6) + 7 * args.batch_size * args.world
    run_measured(synthetic_command(data, rows, sizes), args.workdir / f"{name}.log")
    return data


def synthetic_command(out: Path, rows: int, sizes: List[int], *extra: str) -> List[str]:
    """``mlet-prep synthetic`` of ``rows`` rows at these table sizes (parquet, or ``extra``'s format)."""
    return [
        tool("mlet-prep"),
        "synthetic",
        str(out),
        *extra,
        "--rows",
        str(rows),
        "--table-sizes",
        ",".join(map(str, sizes)),
        "--no-progress",
        "--overwrite",
    ]


def stage_plan(args: argparse.Namespace, data: Path) -> Dict[str, Any]:
    result = {}
    for model in args.models:
        flags = MODELS[model]
        out = args.workdir / f"plan_{model}.json"
        measured = run_measured(
            [
                tool("mlet-plan"),
                "--spec",
                str(data),
                "--world",
                f"1x{args.world}",
                "--device",
                "cpu",
                "--ddr-gb",
                str(args.ddr_gb),
                "--batch-size",
                str(args.batch_size),
                "--sharding",
                args.sharding,
                "--out",
                str(out),
                "--quiet",
                *flags,
            ],
            args.workdir / f"plan_{model}.log",
        )
        result[model] = {**_plain(measured), "file": str(out), "planned_bytes": planned_bytes(out)}
    return result


def train_command(
    args: argparse.Namespace,
    data: Path,
    model: str,
    run_dir: Path,
    plan: Optional[Path],
    steps: int,
    eval_batches: int,
    *extra: str,
) -> List[str]:
    """mlet-train under torchrun, one epoch capped at ``steps`` (0: all), as a user runs it."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.world}",
        str(REPO / "mlet_dist" / "train.py"),
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
        "--batch-size",
        str(args.batch_size),
        "--no-collapse",
        "--no-progress",
        *MODELS[model],
        *extra,
    ]
    cmd += ["--max-train-batches", str(steps)] if steps else []
    cmd += ["--max-eval-batches", str(eval_batches)] if eval_batches else []
    return cmd + (["--plan", str(plan)] if plan is not None else ["--sharding", args.sharding])


def metrics_events(run_dir: Path, event: str) -> List[Dict[str, Any]]:
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if f'"event": "{event}"' in line
    ]


def train_once(args: argparse.Namespace, data: Path, model: str, plan: Optional[Path], tag: str) -> Dict[str, Any]:
    run_dir = args.workdir / f"run_{model}_{tag}"
    cmd = train_command(args, data, model, run_dir, plan, args.steps, 2, "--no-resume")
    return train_record(run_measured(cmd, args.workdir / f"train_{model}_{tag}.log"), run_dir)


def train_record(measured: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """A finished mlet-train run as the train stage reports it."""
    epoch = metrics_events(run_dir, "epoch")[-1]
    return {
        **_plain(measured),
        "steps": epoch["step"],
        "samples_per_s": round(epoch["samples_per_s"], 1),
        "rank_peak_rss_bytes": measured["rank_peaks"],
        "run_dir": str(run_dir),
    }


KILL_EVAL_BATCHES = 2  # val/test batches of the kill -9 stage's runs (their end metrics are compared)


def kill_flags(args: argparse.Namespace) -> List[str]:
    """mlet-train flags of the kill -9 stage's runs: a sync checkpoint every --kill-every steps."""
    return [
        "--checkpoint-every",
        str(args.kill_every),
        "--keep-checkpoints",
        "1",
        "--log-every",
        "1",
        "--checkpoint-mode",
        "sync",
    ]


def ci_reference_run(args: argparse.Namespace, data: Path, plan: Path) -> Dict[str, Any]:
    """--ci's one MLET run on the plan: the kill -9 stage's uninterrupted run (3x--kill-every steps,
    its checkpoints, KILL_EVAL_BATCHES of val and test), reported as the train stage's full-tables
    run and as the epoch stage."""
    run_dir = args.workdir / "run_reference"
    cmd = train_command(
        args, data, HEADLINE, run_dir, plan, 3 * args.kill_every, KILL_EVAL_BATCHES, "--no-resume", *kill_flags(args)
    )
    record = train_record(run_measured(cmd, args.workdir / "train_reference.log"), run_dir)
    record["also"] = (
        f"checkpoints every {args.kill_every} steps (--ci: this run is also the epoch stage and the "
        "kill -9 stage's uninterrupted run)"
    )
    return record


def stage_train(
    args: argparse.Namespace,
    full: Path,
    small: Optional[Path],
    plans: Dict[str, Any],
    report: Dict[str, Any],
    reference: Optional[Dict[str, Any]],
) -> Dict[str, Any]:
    """Every model on the full and the small tables; the headline's full-tables run is ``reference``
    when --ci made it, and ``small`` is None when --ci skips the small tables."""
    skipped = ci_shortcuts(args).get("small_tables")
    result = report["train"] = {"steps": args.steps, "batch_size_per_rank": args.batch_size, "world": args.world}
    for model in args.models:
        full_run = reference if model == HEADLINE and reference is not None else None
        result[model] = {
            "full_tables": full_run or train_once(args, full, model, Path(plans[model]["file"]), "full"),
            "small_tables": {"skipped": skipped} if small is None else train_once(args, small, model, None, "small"),
        }
        for tag, run in result[model].items():  # disk: only the headline's full run is collapsed later
            if (model, tag) != (HEADLINE, "full_tables") and "run_dir" in run:
                shutil.rmtree(run["run_dir"], ignore_errors=True)
        write_report(args, report)  # a model at a time: minutes each at Kaggle size
    if HEADLINE in result and "baseline_d16" in result:  # the MLET/stock throughput ratio per table size
        result["mlet_over_d16"] = {
            tag: round(result[HEADLINE][tag]["samples_per_s"] / result["baseline_d16"][tag]["samples_per_s"], 3)
            for tag in ("full_tables", "small_tables")
            if tag != "small_tables" or small
        }
    return result


def rank_rows(planned: Dict[Any, int], measured: Dict[str, int]) -> List[Dict[str, Any]]:
    """Per rank: the plan's bytes beside the measured peak RSS of that rank."""
    rows = []
    for rank in sorted(planned, key=int):
        peak = measured.get(str(rank))
        rows.append(
            {
                "rank": int(rank),
                "planned_bytes": planned[rank],
                "peak_rss_bytes": peak,
                "measured_over_planned": round(peak / planned[rank], 3) if peak else None,
            }
        )
    return rows


def planned_bytes(plan_file: Path) -> Dict[int, int]:
    """Each rank's ``training_total`` in an mlet-plan file."""
    per_rank = json.loads(Path(plan_file).read_text())["estimates"]["per_rank"]
    return {r["rank"]: r["training_total"] for r in per_rank}


def stage_checkpoint(args: argparse.Namespace, data: Path, plan: Path) -> Dict[str, Any]:
    out = args.workdir / "checkpoint_bench.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.world}",
        str(Path(__file__).resolve()),
        "--_checkpoint-worker",
        str(data),
        str(plan),
        str(args.workdir / "ckpt"),
        str(out),
    ]
    measured = run_measured(cmd, args.workdir / "checkpoint.log")
    result = json.loads(out.read_text())
    for mode in ("sync_save", "async_save"):
        result[mode]["gb_per_s"] = round(result["bytes"] / GB / result[mode]["seconds"], 3)
    result["gb"] = round(result["bytes"] / GB, 3)
    return {**result, **_plain(measured), "rank_peak_rss_bytes": measured["rank_peaks"]}


def checkpoint_worker(data: Path, plan_file: Path, root: Path, out: Path) -> None:
    """Under torchrun: the MLET model on the plan, saved sync, async, then loaded; rank 0 writes times."""
    import torch
    import torch.distributed as dist

    from mlet_dist.data.parquet_batches import DatasetMeta
    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.models.ranking import ModelConfig, model_factory
    from mlet_dist.planning.plan_io import load_plan
    from mlet_dist.training.checkpoint import CheckpointManager, TrainPosition, _init_lazy_optimizer_state
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    quiet_library_logs()
    env = init_distributed("gloo")
    meta = DatasetMeta.load(data)
    model = model_factory(ModelConfig(), meta.table_sizes, len(meta.dense_features), meta.pooling)(torch.device("meta"))
    attach_fused_embedding_optimizer(model, OptimConfig(), env.device.type)
    sharded = shard_model(model, env, ShardingConfig(), plan=load_plan(plan_file)[0])
    optimizer = build_optimizer(sharded, OptimConfig())
    _init_lazy_optimizer_state(optimizer)  # as after a first step
    times: Dict[str, Any] = {}

    def timed(label: str, fn: Any) -> Any:
        dist.barrier()
        started = time.perf_counter()
        value = fn()
        dist.barrier()
        times[label] = {"seconds": round(time.perf_counter() - started, 3)}
        return value

    sync = CheckpointManager(root / "sync", env, mode="sync")
    path = timed("sync_save", lambda: sync.save(sharded, optimizer, TrainPosition(step=1, world_size=env.world_size)))
    asyncm = CheckpointManager(root / "async", env, mode="async")
    timed("async_staging", lambda: asyncm.save(sharded, optimizer, TrainPosition(step=1, world_size=env.world_size)))
    timed("async_finish", asyncm.finish_pending)
    times["async_save"] = {"seconds": round(times["async_staging"]["seconds"] + times["async_finish"]["seconds"], 3)}
    timed("resume_load", lambda: sync.load(path, sharded, optimizer))
    if env.is_main:
        out.write_text(json.dumps({**times, "bytes": dir_bytes(path)}))
        shutil.rmtree(root, ignore_errors=True)
    shutdown_distributed()


def step_losses(run_dir: Path) -> Dict[int, float]:
    """The loss logged at every step; a resumed run's own value wins over the killed attempt's."""
    return {e["step"]: e["loss"] for e in metrics_events(run_dir, "train")}


def end_metrics(run_dir: Path) -> Dict[str, Any]:
    epoch = metrics_events(run_dir, "epoch")[-1]
    return {split: {m: epoch[split][m] for m in ("auc", "logloss", "ne")} for split in ("val", "test")}


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant at once: torchrun starts its workers in sessions of
    their own, so killing its process group leaves them training."""
    import psutil

    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def kill_during_save(
    cmd: Sequence[str], tmp_dir: Path, log: Path, timeout_s: float, after_bytes: int
) -> Dict[str, Any]:
    """Start ``cmd`` in its own session and SIGKILL the whole tree once ``tmp_dir`` (the checkpoint
    being written) holds ``after_bytes`` (0: as soon as it exists; a CI-size save lasts a few ms): a
    crash mid-save, launcher included. Reports how much of the checkpoint was on disk."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline and not tmp_dir.is_dir():
            time.sleep(0.001)
        while after_bytes and proc.poll() is None and tmp_dir.is_dir() and dir_bytes(tmp_dir) < after_bytes:
            time.sleep(0.01)  # a large save: kill it in the middle of its writes
        during = proc.poll() is None and tmp_dir.is_dir()
        kill_tree(proc.pid)
        proc.wait()
        written = dir_bytes(tmp_dir) if tmp_dir.is_dir() else 0
    return {"killed_during_save": during, "bytes_written_at_kill": written, "torn_dir_left": tmp_dir.is_dir()}


def resumed_step(log: str) -> Optional[int]:
    """The step of the checkpoint mlet-train says it resumed from ('resuming from .../step-N')."""
    import re

    found = re.search(r"resuming from \S*step-(\d+)", log)
    return int(found.group(1)) if found else None


def stage_kill_resume(
    args: argparse.Namespace, data: Path, plan: Path, reference: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    """kill -9 during the second checkpoint save, resume, and compare every later step's loss and
    the end metrics with an uninterrupted run of the same steps (exact equality): ``reference``
    (--ci's run, made by ci_reference_run with these flags) or one run here."""
    every = args.kill_every
    steps, flags = 3 * every, kill_flags(args)
    killed_dir = args.workdir / "run_killed"
    if reference is None:
        clean_dir = args.workdir / "run_uninterrupted"
        clean = run_measured(
            train_command(args, data, HEADLINE, clean_dir, plan, steps, KILL_EVAL_BATCHES, "--no-resume", *flags),
            args.workdir / "kill_uninterrupted.log",
        )
        shutil.rmtree(clean_dir / "checkpoints", ignore_errors=True)  # only its losses and metrics are compared
    else:
        clean_dir, clean = Path(reference["run_dir"]), reference
    cmd = train_command(args, data, HEADLINE, killed_dir, plan, steps, KILL_EVAL_BATCHES, *flags)
    tmp = killed_dir / "checkpoints" / f".step-{2 * every:08d}.tmp"
    kill = kill_during_save(
        [*cmd, "--no-resume"], tmp, args.workdir / "kill_killed.log", args.kill_timeout, int(args.kill_after_gb * GB)
    )
    resumed = run_measured(cmd, args.workdir / "kill_resumed.log")
    log = (args.workdir / "kill_resumed.log").read_text()
    expected, got = step_losses(clean_dir), step_losses(killed_dir)
    differing = [s for s in expected if got.get(s) != expected[s]]
    result = {
        **kill,
        "torn_dir_removed_by_resume": not tmp.is_dir(),
        "steps": steps,
        "checkpoint_every": every,
        "resumed_from_step": resumed_step(log),
        "resume_seconds": resumed["seconds"],
        "uninterrupted_seconds": clean["seconds"],
        "steps_compared": len(expected),
        "steps_differing": differing,
        "end_metrics_equal": end_metrics(clean_dir) == end_metrics(killed_dir),
        "uninterrupted_run": REFERENCE if reference is not None else "its own",
    }
    result["matches_uninterrupted"] = not differing and result["end_metrics_equal"] and len(got) == len(expected)
    shutil.rmtree(killed_dir, ignore_errors=True)
    if reference is None:
        shutil.rmtree(clean_dir, ignore_errors=True)
    return result


def stage_epoch(args: argparse.Namespace, data: Path, plan: Path, rows: int, keep_run: bool = False) -> Dict[str, Any]:
    """MLET 64->16 at Kaggle table sizes on the plan for --epoch-steps, val/test AUC and NE on the
    first --epoch-eval-batches batches, and the time of a whole Kaggle epoch (6/7 of the rows,
    the reference split's train part) extrapolated from samples/s."""
    run_dir = args.workdir / "run_epoch"
    cmd = train_command(args, data, HEADLINE, run_dir, plan, args.epoch_steps, args.epoch_eval_batches, "--no-resume")
    result = epoch_record(args, run_measured(cmd, args.workdir / "epoch.log"), run_dir, rows, args.epoch_steps == 0)
    # the whole run, evaluation of every val and test row included, against the plan it ran on
    result["ranks"] = rank_rows(planned_bytes(plan), result["rank_peak_rss_bytes"])
    if not keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def epoch_record(
    args: argparse.Namespace, measured: Dict[str, Any], run_dir: Path, rows: int, whole: bool = False
) -> Dict[str, Any]:
    """A finished MLET run on the plan as the epoch stage reports it (``whole``: it ran to the end of
    the train split, whose last partial global batch the reader drops)."""
    train_rows = rows * 6 // 7
    epoch = metrics_events(run_dir, "epoch")[-1]
    trained = epoch["step"] * args.batch_size * args.world
    if whole and train_rows - trained >= args.batch_size * args.world:
        raise StageFailed(f"a whole epoch trained {trained:,} of {train_rows:,} rows")
    result = {
        **_plain(measured),
        "rank_peak_rss_bytes": measured["rank_peaks"],
        "steps": epoch["step"],
        "rows_trained": trained,
        "epoch_train_rows": train_rows,
        "fraction_of_epoch": 1.0 if whole else round(min(1.0, trained / train_rows), 4),
        "samples_per_s": round(epoch["samples_per_s"], 1),
        "epoch_seconds_extrapolated": round(train_rows / epoch["samples_per_s"], 1),
        "eval_rows": {s: epoch[s]["rows"] for s in ("val", "test")},
        **end_metrics(run_dir),
    }
    return result


def copy_bandwidth(nbytes: int) -> float:
    """This machine's copy rate (bytes read per second, best of 3) on a buffer of ``nbytes``."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return nbytes / best


def stage_collapse(args: argparse.Namespace, run_dir: Path, sizes: List[int]) -> Dict[str, Any]:
    serving = args.workdir / "serving"
    measured = run_measured(
        [tool("mlet-collapse"), "--run-dir", str(run_dir), "--out", str(serving), "--overwrite"],
        args.workdir / "collapse.log",
    )
    read = table_bytes(sizes, 64)
    copy = copy_bandwidth(min(read, int(GB)))
    return {
        **_plain(measured),
        "k_wide_bytes": read,
        "gb_per_s": round(read / GB / measured["seconds"], 3),
        "copy_gb_per_s": round(copy / GB, 3),
        "serving_bytes": dir_bytes(serving),
        "serving_dir": str(serving),
    }


def latency_ms(module: Any, request: Dict[str, Any], calls: int) -> Dict[str, float]:
    import torch

    samples = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up: TorchScript's profiling executor optimises over the first calls
            module(request)
        for _ in range(calls):
            started = time.perf_counter()
            module(request)
            samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return {
        "p50": round(statistics.median(samples), 3),
        "p99": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
    }


def stage_export(args: argparse.Namespace, serving: Path) -> Dict[str, Any]:
    from bench_serving import requests_for
    from mlet_dist.serving.export_artifact import load_predict_module, module_file

    artifact = args.workdir / "artifact"
    measured = run_measured(
        [tool("mlet-export"), str(serving), str(artifact), "--overwrite", "--precision", *args.precisions],
        args.workdir / "export.log",
    )
    result: Dict[str, Any] = {**_plain(measured), "bytes": dir_bytes(artifact), "precisions": {}}
    requests = {batch: requests_for(serving, batch) for batch in args.latency_batches}
    for precision in args.precisions:
        started = time.perf_counter()
        module = load_predict_module(artifact, precision)
        loaded = time.perf_counter() - started
        result["precisions"][precision] = {
            "module_bytes": (artifact / module_file(precision)).stat().st_size,
            "load_seconds": round(loaded, 3),
            "latency_ms": {str(b): latency_ms(module, r, args.latency_calls) for b, r in requests.items()},
        }
        del module
    return result


def readme(report: Dict[str, Any]) -> str:
    """The report as a short Markdown table, one row per stage."""

    def gb(n: Optional[float]) -> str:
        return "-" if n is None else f"{n / GB:.2f}"

    prep, train, ck, col, exp = (report.get(s, {}) for s in ("prep", "train", "checkpoint", "collapse", "export"))
    lines = [
        f"# Criteo-Kaggle scale rehearsal (fraction {report['fraction']})",
        "",
        f"{report['rows']:,} rows, {report['table_rows_total']:,} table rows, {report['world']} ranks, "
        f"{report['machine']}. Written by `benchmarks/scale_rehearsal.py`; figures in `kaggle.json`."
        + (f" Not run: {', '.join(report['not_run'])}." if report["not_run"] else ""),
        "",
        "| stage | seconds | peak RSS GB | figure |",
        "|---|---|---|---|",
    ]
    if prep:
        ck_ = prep["criteo_kaggle"]
        lines.append(
            f"| prep (criteo-kaggle, {ck_['workers']} workers) | {ck_['seconds']:.1f} | "
            f"{gb(ck_['peak_rss_bytes'])} | {ck_['mb_per_s']} MB/s, vocabularies {ck_['vocabulary_total']:,} |"
        )
    for model in MODELS:
        if model in train:
            for tag in ("full_tables", "small_tables"):
                t = train[model][tag]
                if "skipped" in t:
                    lines.append(f"| train {model} ({tag.replace('_', ' ')}) | - | - | {t['skipped']} |")
                    continue
                lines.append(
                    f"| train {model} ({tag.replace('_', ' ')}) | {t['seconds']:.1f} | "
                    f"{gb(t['peak_rss_bytes'])} | {t['samples_per_s']:,} samples/s |"
                )
    if ck:
        lines.append(
            f"| checkpoint (sync / async save, load) | {ck['sync_save']['seconds']} / "
            f"{ck['async_save']['seconds']} / {ck['resume_load']['seconds']} | {gb(ck['peak_rss_bytes'])} | "
            f"{ck['gb']} GB, sync {ck['sync_save']['gb_per_s']} GB/s |"
        )
    kill = ck.get("kill9")
    if kill:
        lines.append(
            f"| kill -9 during save of step {2 * kill['checkpoint_every']}, resume | "
            f"{kill['resume_seconds']:.1f} | - | killed mid-save: {kill['killed_during_save']}, "
            f"resumed from step {kill['resumed_from_step']}, matches uninterrupted "
            f"({kill['steps_compared']} step losses, val/test): {kill['matches_uninterrupted']} |"
        )
    if col:
        lines.append(
            f"| collapse{' (' + col['model'] + ' model)' if 'model' in col else ''} | {col['seconds']:.1f} | {gb(col['peak_rss_bytes'])} | {col['gb_per_s']} GB/s "
            f"(copy {col['copy_gb_per_s']} GB/s) |"
        )
    if exp:
        first = next(iter(exp["precisions"]))
        lat = exp["precisions"][first]["latency_ms"]
        lines.append(
            f"| export {'/'.join(exp['precisions'])}{' (' + exp['model'] + ' model)' if 'model' in exp else ''} | "
            f"{exp['seconds']:.1f} | {gb(exp['peak_rss_bytes'])} | "
            f"{gb(exp['bytes'])} GB; {first} p50 ms " + ", ".join(f"b{b}: {v['p50']}" for b, v in lat.items()) + " |"
        )
    ep = report.get("epoch")
    if ep:
        lines.append(
            f"| epoch MLET 64->16 ({ep['fraction_of_epoch']:.1%}: {ep['rows_trained']:,} of "
            f"{ep['epoch_train_rows']:,} rows) | {ep['seconds']:.1f} | {gb(ep['peak_rss_bytes'])} | "
            f"{ep['samples_per_s']:,} samples/s, whole epoch {ep['epoch_seconds_extrapolated'] / 3600:.2f} h; "
            f"val AUC {ep['val']['auc']:.4f} NE {ep['val']['ne']:.4f}, test AUC {ep['test']['auc']:.4f} "
            f"NE {ep['test']['ne']:.4f}" + (f" (the run of {ep['reused_from']})" if "reused_from" in ep else "") + " |"
        )
    for title, ranks in (("training stage", report.get("ranks")), ("epoch stage", (ep or {}).get("ranks"))):
        if ranks:
            lines += ["", f"| rank ({title}) | planned GB | measured peak RSS GB | measured / planned |"]
            lines += ["|---|---|---|---|"]
            lines += [
                f"| {r['rank']} | {gb(r['planned_bytes'])} | {gb(r['peak_rss_bytes'])} | {r['measured_over_planned']} |"
                for r in ranks
            ]
    return "\n".join(lines) + "\n"


def write_report(args: argparse.Namespace, report: Dict[str, Any]) -> None:
    """kaggle.json and README.md as they stand: written after every stage, so an hours-long run that
    fails or is stopped keeps the stages it finished."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kaggle.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "README.md").write_text(readme(report))


def run(args: argparse.Namespace, report: Dict[str, Any]) -> None:
    sizes = kaggle_table_sizes(args.fraction)
    rows = max(1000, round(KAGGLE_ROWS * args.fraction))
    prep_rows = max(1000, round(KAGGLE_ROWS * args.prep_fraction))
    report.update(
        {
            "fraction": args.fraction,
            "rows": rows,
            "table_rows_total": sum(sizes),
            "table_sizes": sizes,
            "world": args.world,
            "machine": machine_line(),
            "not_run": [],
        }
    )
    report["room"] = check_room(args, sizes, prep_rows)
    progress(f"prep: {prep_rows:,} rows of raw TSV, then mlet-prep criteo-kaggle")
    report["prep"] = stage_prep(args, sizes, prep_rows)
    if prep_rows < rows:
        report["not_run"].append(f"prep of all {rows:,} rows ({prep_rows:,} ran; the whole is extrapolated from MB/s)")
    write_report(args, report)
    progress(f"training datasets: Kaggle-size tables and tables capped at {args.small_table_rows:,} rows")
    shortcuts = ci_shortcuts(args)
    full = training_data(args, sizes, "train_full", max(args.steps, 3 * args.kill_every, args.epoch_steps))
    small = (
        None
        if "small_tables" in shortcuts
        else training_data(args, [min(n, args.small_table_rows) for n in sizes], "train_small", args.steps)
    )
    report["not_run"] += [f"train on the small tables: {shortcuts['small_tables']}"] if small is None else []
    progress(f"plan: mlet-plan 1x{args.world} cpu for {', '.join(args.models)}")
    report["plan"] = stage_plan(args, full)
    plan = Path(report["plan"][HEADLINE]["file"])
    reference = None
    if shortcuts:
        progress(f"--ci: one MLET run on the plan, {3 * args.kill_every} steps, a checkpoint every {args.kill_every}")
        reference = ci_reference_run(args, full, plan)
    progress(f"train: {len(args.models)} models x {1 if small is None else 2} table sizes, {args.steps} steps each")
    report["train"] = stage_train(args, full, small, report["plan"], report, reference)
    report["ranks"] = rank_rows(
        report["plan"][HEADLINE]["planned_bytes"], report["train"][HEADLINE]["full_tables"]["rank_peak_rss_bytes"]
    )
    if reference is not None:
        report["epoch"] = {
            **epoch_record(
                args, {**reference, "rank_peaks": reference["rank_peak_rss_bytes"]}, Path(reference["run_dir"]), rows
            ),
            "reused_from": shortcuts["epoch"],
        }
    write_report(args, report)
    progress("checkpoint: sync, async save and load")
    report["checkpoint"] = stage_checkpoint(args, full, plan)
    write_report(args, report)
    progress(f"checkpoint: kill -9 during the save of step {2 * args.kill_every}, resume, compare")
    report["checkpoint"]["kill9"] = stage_kill_resume(args, full, plan, reference)
    write_report(args, report)
    progress("collapse: mlet-collapse of the MLET run")
    report["collapse"] = stage_collapse(args, Path(report["train"][HEADLINE]["full_tables"]["run_dir"]), sizes)
    shutil.rmtree(report["train"][HEADLINE]["full_tables"]["run_dir"], ignore_errors=True)
    progress("export: mlet-export and predict latency")
    report["export"] = stage_export(args, Path(report["collapse"]["serving_dir"]))
    shutil.rmtree(report["collapse"]["serving_dir"], ignore_errors=True)
    write_report(args, report)
    if reference is None:
        progress(f"epoch: MLET on the Kaggle-size tables, {args.epoch_steps} steps")
        report["epoch"] = stage_epoch(args, full, plan, rows)
    if report["epoch"]["fraction_of_epoch"] < 1:
        report["not_run"].append(
            f"the whole epoch ({report['epoch']['fraction_of_epoch']:.1%} of it ran; "
            "its time is extrapolated from samples/s)"
        )


def run_epoch_only(args: argparse.Namespace, report: Dict[str, Any]) -> None:
    """The epoch stage alone, on a dataset of all the rows when --epoch-steps is 0 (a whole epoch:
    hours at full size, so apart from the other stages), then the collapse and export of the model
    it trained, replacing those three sections of the kaggle.json an earlier full run left in --out."""
    previous = args.out / "kaggle.json"
    if not previous.is_file():
        raise SystemExit(f"error: --epoch-only replaces the epoch of an earlier run: no {previous}")
    report.update(json.loads(previous.read_text()))
    if report.get("fraction") != args.fraction:
        raise SystemExit(f"error: {previous} is of --fraction {report.get('fraction')}, not {args.fraction}")
    sizes = kaggle_table_sizes(args.fraction)
    rows = report["rows"]
    whole = args.epoch_steps == 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    progress(f"epoch only: {'all ' + format(rows, ',') if whole else 'enough'} rows at Kaggle table sizes")
    data = training_data(args, sizes, "train_epoch", args.epoch_steps, rows if whole else None)
    args.models = [HEADLINE]
    plan = Path(stage_plan(args, data)[HEADLINE]["file"])
    progress(f"epoch: MLET on the Kaggle-size tables, {'a whole epoch' if whole else args.epoch_steps} steps")
    report["epoch"] = stage_epoch(args, data, plan, rows, keep_run=True)
    report["not_run"] = [line for line in report["not_run"] if not line.startswith("the whole epoch")]
    if report["epoch"]["fraction_of_epoch"] < 1:
        report["not_run"].append(
            f"the whole epoch ({report['epoch']['fraction_of_epoch']:.1%} of it ran; "
            "its time is extrapolated from samples/s)"
        )
    write_report(args, report)
    run_dir = args.workdir / "run_epoch"
    progress("collapse and export of the model the epoch trained")
    report["collapse"] = {**stage_collapse(args, run_dir, sizes), "model": "the epoch stage's"}
    shutil.rmtree(run_dir, ignore_errors=True)
    report["export"] = {**stage_export(args, Path(report["collapse"]["serving_dir"])), "model": "the epoch stage's"}
    shutil.rmtree(report["collapse"]["serving_dir"], ignore_errors=True)


def machine_line() -> str:
    import psutil

    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, load {load:.1f} at start"


def progress(line: str) -> None:
    print(f"[scale] {line}", file=sys.stderr, flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=1.0, help="scale of rows and table sizes (1 = Kaggle)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/scale/rehearsal"), help="data, runs, artifacts")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "scale", help="kaggle.json and README.md here")
    p.add_argument("--world", type=int, default=2, help="training ranks")
    p.add_argument("--steps", type=int, default=30, help="training steps per model and table size")
    p.add_argument("--batch-size", type=int, default=2048, help="per rank")
    p.add_argument("--small-table-rows", type=int, default=100_000, help="the capped tables' size")
    p.add_argument("--sharding", default="table_wise")
    p.add_argument("--ddr-gb", type=float, default=10.0, help="mlet-plan's per-rank memory budget")
    p.add_argument("--latency-batches", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help=f"models to plan and train ({HEADLINE} is needed for ranks, checkpoint, collapse)",
    )
    p.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp32", "fp16", "int8"])
    p.add_argument(
        "--kill-every",
        type=int,
        default=3,
        help="checkpoint interval of the kill -9 stage (killed saving step 2x this, 3x trained)",
    )
    p.add_argument(
        "--kill-after-gb",
        type=float,
        default=1.0,
        help="kill once this much of that checkpoint is written (0: as soon as its dir exists)",
    )
    p.add_argument("--kill-timeout", type=float, default=1800, help="seconds to wait for that save to start")
    p.add_argument(
        "--epoch-steps",
        type=int,
        default=300,
        help="steps of the epoch stage; a whole epoch's time is extrapolated from its samples/s",
    )
    p.add_argument(
        "--prep-fraction",
        type=float,
        default=None,
        help="rows of the prep stage (raw TSV + mlet-prep) as a fraction of Kaggle's (default: "
        "--fraction); the whole prep's time is extrapolated from its rate",
    )
    p.add_argument(
        "--epoch-eval-batches",
        type=int,
        default=0,
        help="the epoch stage evaluates the first N x --batch-size rows of val and test (0: all)",
    )
    p.add_argument(
        "--epoch-only",
        action="store_true",
        help="run the epoch stage, then collapse and export its model, and replace those sections of "
        "--out's kaggle.json (with --epoch-steps 0: a whole epoch over all the rows, an hour or more "
        "at full size)",
    )
    p.add_argument("--keep", action="store_true", help="keep the workdir (default: removed at the end)")
    p.add_argument(
        "--ci",
        action="store_true",
        help="the test suite's run: one MLET run stands for the full-tables training, the epoch stage "
        "and the kill -9 stage's uninterrupted run; no small-tables training (kaggle.json says so)",
    )
    p.add_argument("--_checkpoint-worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    args.prep_fraction = args.fraction if args.prep_fraction is None else args.prep_fraction
    if not 0 < args.prep_fraction <= args.fraction:
        p.error(f"--prep-fraction must be in (0, --fraction], got {args.prep_fraction}")
    if HEADLINE not in args.models:
        p.error(f"--models must include {HEADLINE} (the checkpoint, collapse and export stages use it)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args._checkpoint_worker:
        checkpoint_worker(*map(Path, args._checkpoint_worker))
        return 0
    report: Dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if args.epoch_only:
            run_epoch_only(args, report)
            write_report(args, report)
            print(readme(report))
            return 0
        run(args, report)
        report["total_seconds"] = round(time.perf_counter() - started, 1)  # the whole rehearsal, this box's load
    except StageFailed as err:
        from mlet_dist.training.checkpoint import first_line

        report["not_run"].append(f"everything after a failed stage ({first_line(err)})")
        write_report(args, report)
        print(f"error: stage failed: {err}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    write_report(args, report)
    print(readme(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

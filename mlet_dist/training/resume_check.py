"""Before resuming: does the run dir hold the model this command builds?

Reusing a --run-dir with another -d (or -k, --model, MLP sizes, arch) used to resume anyway and
die in the checkpoint load with a long size-mismatch traceback. The run dir's metrics.jsonl keeps
each attempt's command line (its "config" records), so the shapes can be compared first and the
answer be one line naming both models and the ways out.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from mlet_dist.config_io import load_config
from mlet_dist.training.config import TrainConfig


def model_shape(cfg: TrainConfig) -> Dict[str, Any]:
    """The flags that decide the model's tensors (what a checkpoint must match), as given on the CLI."""
    shape: Dict[str, Any] = {"--model": "mlet" if cfg.embedding.mlet else "baseline",
                             "-d": cfg.embedding.embedding_dim}
    if cfg.embedding.mlet:
        shape["-k"] = cfg.embedding.inner_dim
        shape["--projection-after-comm"] = not cfg.sharding.owner_projection
    shape["--arch"] = cfg.arch
    shape["--bottom-mlp"] = ",".join(map(str, cfg.dlrm.bottom_mlp))
    shape["--top-mlp"] = ",".join(map(str, cfg.dlrm.top_mlp))
    shape["--bottom-mlp-output"] = cfg.dlrm.bottom_mlp_output
    if cfg.arch == "dcnv2":
        shape["--dcn-layers"] = cfg.dcn.cross_layers
        shape["--dcn-low-rank"] = cfg.dcn.low_rank
    return shape


def recorded_argv(run_dir: Path) -> Optional[List[str]]:
    """The command line of the newest attempt in `run_dir` (its last "config" record), if any."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    argv = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if isinstance(record, dict) and record.get("event") == "config" and isinstance(record.get("argv"), list):
            argv = [str(a) for a in record["argv"]]
    return argv


def recorded_bottom_mlp_output(run_dir: Path) -> Optional[str]:
    """How the run in ``run_dir`` ended its bottom MLP. Its argv replayed through today's parser
    would say today's default; its config.json says what it was (a file written before the flag
    existed loads as "relu", config_io's LEGACY_DEFAULTS), and a run dir without one is older
    still: relu. None: the file is unreadable (the checkpoint load reports it)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return "relu"
    try:
        return load_config(TrainConfig, path).dlrm.bottom_mlp_output
    except ValueError:
        return None


def _describe(shape: Dict[str, Any]) -> str:
    parts = []
    for flag, value in shape.items():
        if isinstance(value, bool):
            if value:
                parts.append(flag)
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def check_resume_matches(cfg: TrainConfig) -> None:
    """Raise SystemExit("error: ...") when cfg would resume a checkpoint of another model shape."""
    from mlet_dist.training.config import parse_args

    if not cfg.resume or not any((cfg.run_dir / "checkpoints").glob("step-*")):
        return  # nothing will be loaded
    argv = recorded_argv(cfg.run_dir)
    if argv is None:
        return
    try:
        before = model_shape(parse_args(argv))
    except (SystemExit, ValueError):
        return  # a command line this version cannot parse: let the checkpoint load decide
    before["--bottom-mlp-output"] = recorded_bottom_mlp_output(cfg.run_dir) or before["--bottom-mlp-output"]
    now = model_shape(cfg)
    if before == now:
        return
    changed = [flag for flag in {**before, **now} if before.get(flag) != now.get(flag)]
    raise SystemExit(
        f"error: run dir {cfg.run_dir} holds a checkpoint of another model ({_describe(before)}, from its "
        f"metrics.jsonl) than this command builds ({_describe(now)}; differs in {', '.join(changed)}). "
        f"Pass --no-resume to train afresh there (the earlier run is moved to {cfg.run_dir}/previous-<time>/), "
        f"or give another --run-dir"
    )

"""Before resuming: does the run dir hold the model this command builds?

Reusing a --run-dir with another -d (or -k, --model, MLP sizes, arch) used to resume anyway and
die in the checkpoint load with a long size-mismatch traceback. The run dir's config.json (or, in
runs older than it, the command lines metrics.jsonl keeps) says what it trained, so the shapes can
be compared first and the answer be one line naming both models and the ways out.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mlet_dist.config_io import load_config
from mlet_dist.training.config import TrainConfig


def model_shape(cfg: TrainConfig) -> Dict[str, Any]:
    """The flags that decide the model's tensors (what a checkpoint must match), as given on the CLI."""
    shape: Dict[str, Any] = {"--model": "mlet" if cfg.embedding.mlet else "baseline", "-d": cfg.embedding.embedding_dim}
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


def predating_config_json(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` replayed from the argv of a run dir that has no config.json: such a run is older
    than config.json and than --bottom-mlp-output, so it trained with the ReLU that today's parser
    does not default to."""
    cfg.dlrm.bottom_mlp_output = "relu"
    return cfg


def recorded_config(run_dir: Path) -> Optional[Tuple[TrainConfig, str]]:
    """The config the run in ``run_dir`` trained with, and where it was read: its config.json
    (files older than a field load it as those runs had it, config_io's LEGACY_DEFAULTS), else
    its newest command line replayed. None: neither is readable (the checkpoint load decides)."""
    from mlet_dist.training.config import parse_args

    saved = run_dir / "config.json"
    if saved.is_file():
        try:
            return load_config(TrainConfig, saved), "config.json"
        except ValueError:
            pass  # damaged: the command line still tells the shape
    argv = recorded_argv(run_dir)
    if argv is None:
        return None
    try:
        cfg = parse_args(argv)
    except (SystemExit, ValueError):
        return None  # a command line this version cannot parse
    return (cfg if saved.is_file() else predating_config_json(cfg)), "metrics.jsonl"


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
    if not cfg.resume or not any((cfg.run_dir / "checkpoints").glob("step-*")):
        return  # nothing will be loaded
    recorded = recorded_config(cfg.run_dir)
    if recorded is None:
        return
    before, source = model_shape(recorded[0]), recorded[1]
    now = model_shape(cfg)
    if before == now:
        return
    changed = [flag for flag in {**before, **now} if before.get(flag) != now.get(flag)]
    raise SystemExit(
        f"error: run dir {cfg.run_dir} holds a checkpoint of another model ({_describe(before)}, from its "
        f"{source}) than this command builds ({_describe(now)}; differs in {', '.join(changed)}). "
        f"Pass --no-resume to train afresh there (the earlier run is moved to {cfg.run_dir}/previous-<time>/), "
        f"or give another --run-dir"
    )

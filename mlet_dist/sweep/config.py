"""Sweep configuration (YAML or JSON) and its expansion into runs.

Example (all keys but ``data`` optional; relative paths are relative to the working directory):

    name: tiny_planted
    data: runs/data/planted_tiny          # a prepared dataset (mlet-prep output)
    prepare:                              # optional: generated first when `data` has no meta.json
      planted: {rows: 50000, tables: 4, cardinality: 5000, rank: 4, seed: 0}
    runs_dir: runs/sweeps/tiny_planted    # one run dir per run below it (default runs/sweeps/<name>)
    report_dir: runs/sweeps/tiny_planted/report   # default <runs_dir>/report; committed reports
                                          # are refreshed with `mlet-sweep ... --report-dir reports/<name>`
    grid:
      archs: [dlrm, dcnv2]
      seeds: [0, 1, 2]
      baseline: {d: [4, 8, 16, 32, 64]}
      mlet: {k: [32, 64, 128], d: [4, 8, 16]}
    launch:
      world_size: 1                       # ranks per run (torchrun --nproc-per-node)
      threads_per_rank: 1                 # OMP_NUM_THREADS of each rank
      cpu_budget: 2                       # cores for the whole sweep: parallel runs = budget // (ws * threads)
      timeout_s: null                     # per run
      keep_checkpoints: false             # finished runs lose checkpoints/ and best_model/
      tensorboard: false                  # TensorBoard event files in each run dir
      scheduler: torchrun                 # or a torchx scheduler: local_cwd | slurm | kubernetes | ...
      # with a torchx scheduler (one app per run from launch/components.py:train; launch/README.md):
      # nodes: 2                          # world_size = nodes x processes per node
      # component: {gpu: 8, cpu: 64, memMB: 480000, image: IMG, max_restarts: 2}   # components.py:train options
      # scheduler_cfg: {partition: gpu, time: "8:00:00"}   # torchx run config (`torchx runopts SCHED`)
      # max_concurrent: 16                # apps at once (default: cpu budget locally, all on a cluster)
      # job_data: /data/criteo            # data / runs_dir as the job sees them (default: the same paths)
      # job_runs_dir: /runs/criteo_sweep
    train_args: [--epochs, 2, --batch-size, 512]   # passed to every train.py run
    arch_args: {dcnv2: [--dcn-low-rank, 32]}        # passed to the runs of one arch
    model_args: {baseline: [--embedding-lr, 0.3]}   # passed to the runs of one model family (tuned lrs)
    report:
      rare_items: {features: null, aggregate: min, edges: [1, 4, 16, 64, 256, 1024, 4096], min_rows: 100}
      bootstrap_resamples: 500            # paired bootstrap of the headline comparison (0: skip it)
      equivalence_margin: 0.003           # AUC: the headline says "matches" only within this (TOST)

Each run is train.py with ``--arch A --model baseline -d D`` or ``--model mlet -k K -d D`` and
``--seed S`` (plus the args above), in ``runs_dir/<run_id>``; MLET pairs with k < d are skipped.
"""

import argparse
import json
import os
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence

from data_prep.safe_json import read_json_file
from mlet_dist.cli_common import given_dests
from mlet_dist.models.dcn import ARCHS
from mlet_dist.training.config import build_parser

MODELS = ("baseline", "mlet")

AGGREGATES = ("min", "max", "mean_log")


@dataclass(frozen=True)
class RunSpec:
    arch: str
    model: str  # "baseline" | "mlet"
    d: int
    k: Optional[int]
    seed: int

    @property
    def run_id(self) -> str:
        width = f"k{self.k}-d{self.d}" if self.model == "mlet" else f"d{self.d}"
        return f"{self.arch}-{self.model}-{width}-s{self.seed}"

    @property
    def group(self) -> tuple:
        """Runs that differ only by seed."""
        return (self.arch, self.model, self.d, self.k)

    def train_args(self) -> List[str]:
        args = ["--arch", self.arch, "--model", self.model, "--embedding-dim", str(self.d), "--seed", str(self.seed)]
        if self.model == "mlet":
            args += ["--inner-dim", str(self.k)]
        return args


TORCHRUN = "torchrun"  # launch.scheduler: each run a local torchrun subprocess (the default)
# launch/components.py:train options the sweep sets per run (from world_size, nodes, threads_per_rank
# and the run id); every other option of the component may be given in launch.component
COMPONENT_RESERVED = ("j", "threads", "name", "script", "script_args")
TORCHX_ONLY = ("nodes", "component", "scheduler_cfg", "max_concurrent", "poll_s", "job_data", "job_runs_dir")


@dataclass
class LaunchConfig:
    world_size: int = 1  # ranks per run (nodes x processes per node)
    threads_per_rank: int = 1
    cpu_budget: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout_s: Optional[float] = None
    tensorboard: bool = False
    keep_checkpoints: bool = False  # remove a finished run's checkpoints/ and best_model/
    # torchrun: local subprocesses; any torchx scheduler (local_cwd, slurm, kubernetes, ...): one
    # app per run built from launch/components.py:train (mlet_dist/sweep/torchx_runner.py)
    scheduler: str = TORCHRUN
    nodes: int = 1  # torchx: nodes per run (-j NODESx(world_size / NODES))
    component: Dict[str, Any] = field(default_factory=dict)  # torchx: components.py:train options
    scheduler_cfg: Dict[str, Any] = field(default_factory=dict)  # torchx: run config (partition, queue, ...)
    max_concurrent: Optional[int] = None  # torchx: apps at once (default: cpu budget locally, all on a cluster)
    poll_s: Optional[float] = None  # torchx: status polling interval (default 2 s locally, 30 s on a cluster)
    job_data: Optional[str] = None  # torchx: `data` as the job sees it (default: data, absolute)
    job_runs_dir: Optional[str] = None  # torchx: `runs_dir` as the job sees it (default: runs_dir, absolute)

    def __post_init__(self) -> None:
        for name in ("world_size", "threads_per_rank", "cpu_budget", "nodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"launch.{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.scheduler, str) or not self.scheduler:
            raise ValueError(f"launch.scheduler must be {TORCHRUN} or a torchx scheduler name, got {self.scheduler!r}")
        if self.scheduler == TORCHRUN:
            given = [f.name for f in fields(self) if f.name in TORCHX_ONLY and getattr(self, f.name) != _default(f)]
            if given:
                raise ValueError(
                    f"launch.{given[0]} needs a torchx scheduler (launch.scheduler: local_cwd, "
                    f"slurm, kubernetes, ...); with {TORCHRUN} each run is a local torchrun"
                )
            return
        if self.world_size % self.nodes:
            raise ValueError(f"launch.world_size {self.world_size} is not a multiple of launch.nodes {self.nodes}")
        for name in ("component", "scheduler_cfg"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"launch.{name} must be a mapping, got {getattr(self, name)!r}")
        reserved = sorted(set(self.component) & set(COMPONENT_RESERVED))
        if reserved:
            raise ValueError(
                f"launch.component may not set {reserved}: the sweep sets them per run "
                "(j from world_size and nodes, threads from threads_per_rank, name from the run id)"
            )
        if self.max_concurrent is not None and int(self.max_concurrent) < 1:
            raise ValueError(f"launch.max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.poll_s is not None and not float(self.poll_s) > 0:
            raise ValueError(f"launch.poll_s must be > 0, got {self.poll_s}")

    @property
    def parallel_runs(self) -> int:
        return max(1, self.cpu_budget // (self.world_size * self.threads_per_rank))

    @property
    def procs_per_node(self) -> int:
        return self.world_size // self.nodes

    def to_json(self) -> Dict[str, Any]:
        """asdict, without the torchx settings when the sweep runs torchrun (as before they existed)."""
        out = asdict(self)
        if self.scheduler == TORCHRUN:
            for key in ("scheduler", *TORCHX_ONLY):
                out.pop(key)
        return out


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass
class RareItemsConfig:
    """Each test example's frequency = `aggregate` over `features` (default: all sparse features)
    of the train count of its id; examples are bucketed by it at `edges` (bucket i holds
    [edges[i-1], edges[i]), the first [0, edges[0]), the last [edges[-1], inf))."""

    features: Optional[List[str]] = None
    aggregate: str = "min"
    edges: List[int] = field(default_factory=lambda: [1, 4, 16, 64, 256, 1024, 4096])
    min_rows: int = 100  # buckets with fewer test rows get no AUC

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"report.rare_items.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if not self.edges or list(self.edges) != sorted(set(self.edges)) or self.edges[0] < 1:
            raise ValueError(f"report.rare_items.edges must be increasing integers >= 1, got {self.edges}")


@dataclass
class SweepConfig:
    data: Path
    name: str = "sweep"
    runs_dir: Optional[Path] = None
    report_dir: Optional[Path] = None
    prepare: Optional[Dict[str, Any]] = None
    archs: List[str] = field(default_factory=lambda: ["dlrm"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    baseline_d: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    mlet_k: List[int] = field(default_factory=lambda: [32, 64, 128])
    mlet_d: List[int] = field(default_factory=lambda: [4, 8, 16])
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    train_args: List[str] = field(default_factory=list)
    arch_args: Dict[str, List[str]] = field(default_factory=dict)
    model_args: Dict[str, List[str]] = field(default_factory=dict)
    rare_items: RareItemsConfig = field(default_factory=RareItemsConfig)
    save_predictions: bool = True
    diagnostics: bool = True
    bootstrap_resamples: int = 500
    equivalence_margin: float = 0.003  # AUC: "matches" needs TOST equivalence within +-margin

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.runs_dir = Path(self.runs_dir) if self.runs_dir else Path("runs") / "sweeps" / self.name
        # under runs/ unless asked: running an example must not overwrite the committed reports/<name>/
        self.report_dir = Path(self.report_dir) if self.report_dir else self.runs_dir / "report"
        bad = [a for a in self.archs if a not in ARCHS]
        if bad or not self.archs:
            raise ValueError(f"grid.archs must be a non-empty subset of {ARCHS}, got {self.archs}")
        unknown = sorted(set(self.arch_args) - set(ARCHS))
        if unknown:
            raise ValueError(f"arch_args has unknown archs {unknown}")
        unknown = sorted(set(self.model_args) - set(MODELS))
        if unknown:
            raise ValueError(f"model_args has unknown models {unknown} (known: {list(MODELS)})")
        if not self.seeds:
            raise ValueError("grid.seeds is empty")
        if self.bootstrap_resamples < 0:
            raise ValueError(
                f"report.bootstrap_resamples must be >= 0 (0: no headline test), got {self.bootstrap_resamples}"
            )
        if not (isinstance(self.equivalence_margin, (int, float)) and 0 < self.equivalence_margin < 0.5):
            raise ValueError(
                f"report.equivalence_margin must be an AUC difference in (0, 0.5), got {self.equivalence_margin!r}"
            )
        for args in (self.train_args, *self.arch_args.values(), *self.model_args.values()):
            clash = reserved_flags_in(args)
            if clash:
                raise ValueError(
                    f"train_args/arch_args/model_args may not set {clash} (in {args}): the sweep sets them per run"
                )
        if self.prepare is not None and set(self.prepare) - {"planted"}:
            raise ValueError(f"prepare supports only 'planted', got {sorted(self.prepare)}")

    def runs(self) -> List[RunSpec]:
        """Baselines then MLET, per arch and seed; MLET pairs with k < d are skipped."""
        out: List[RunSpec] = []
        for arch in self.archs:
            for seed in self.seeds:
                out += [RunSpec(arch, "baseline", d, None, seed) for d in self.baseline_d]
                out += [RunSpec(arch, "mlet", d, k, seed) for k in self.mlet_k for d in self.mlet_d if k >= d]
        return out

    def run_dir(self, run: RunSpec) -> Path:
        assert self.runs_dir is not None
        return self.runs_dir / run.run_id

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["launch"] = self.launch.to_json()
        return json.loads(json.dumps(out, default=str))


def _ints(value: Any, where: str) -> List[int]:
    values = [value] if isinstance(value, int) else list(value or [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{where} must be integers >= 1, got {value!r}")
    return values


RESERVED_TRAIN_DESTS = ("data", "run_dir", "model", "arch", "embedding_dim", "inner_dim", "seed")  # set per run


def _refuse_train_args(message: str) -> NoReturn:
    raise ValueError(f"train_args/arch_args/model_args: train.py would not accept them: {message}")


def _train_parser() -> argparse.ArgumentParser:
    """train.py's own parser, raising ValueError instead of printing usage and exiting."""
    parser = build_parser()
    parser.error = _refuse_train_args  # type: ignore[method-assign]
    return parser


def reserved_flags_in(args: Sequence[str]) -> List[str]:
    """The per-run flags that ``args`` sets, as train.py's parser reads them: ``--seed=5``, an
    abbreviation (``--embedding-d 64``) and a short alias (``-d 4``) included. Comparing strings
    missed all three, and every run silently trained with the one value its dir name denied."""
    parser = _train_parser()
    given = given_dests(_train_parser, list(args))
    return [
        max(a.option_strings, key=len) for a in parser._actions if a.dest in RESERVED_TRAIN_DESTS and a.dest in given
    ]


def _strs(value: Any, where: str) -> List[str]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list, got {value!r}")
    return [str(v) for v in value]


def from_dict(raw: Mapping[str, Any]) -> SweepConfig:
    known = {
        "name",
        "data",
        "prepare",
        "runs_dir",
        "report_dir",
        "grid",
        "launch",
        "train_args",
        "arch_args",
        "model_args",
        "report",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown sweep config keys {unknown}; known: {sorted(known)}")
    if "data" not in raw:
        raise ValueError("the sweep config needs `data` (a prepared dataset directory)")
    grid = dict(raw.get("grid") or {})
    unknown = sorted(set(grid) - {"archs", "seeds", "baseline", "mlet"})
    if unknown:
        raise ValueError(f"unknown grid keys {unknown}")
    kw: Dict[str, Any] = {"data": raw["data"], "name": str(raw.get("name", "sweep"))}
    for key in ("runs_dir", "report_dir", "prepare"):
        if raw.get(key) is not None:
            kw[key] = raw[key]
    if "archs" in grid:
        kw["archs"] = [str(a) for a in grid["archs"]]
    if "seeds" in grid:
        kw["seeds"] = [int(s) for s in (grid["seeds"] if isinstance(grid["seeds"], list) else [grid["seeds"]])]
    if "baseline" in grid:
        kw["baseline_d"] = _ints((grid["baseline"] or {}).get("d"), "grid.baseline.d")
    if "mlet" in grid:
        mlet = grid["mlet"] or {}
        kw["mlet_k"] = _ints(mlet.get("k"), "grid.mlet.k")
        kw["mlet_d"] = _ints(mlet.get("d"), "grid.mlet.d")
    if raw.get("launch") is not None:
        kw["launch"] = LaunchConfig(**raw["launch"])
    if raw.get("train_args") is not None:
        kw["train_args"] = _strs(raw["train_args"], "train_args")
    if raw.get("arch_args") is not None:
        kw["arch_args"] = {str(a): _strs(v, f"arch_args.{a}") for a, v in raw["arch_args"].items()}
    if raw.get("model_args") is not None:
        kw["model_args"] = {str(m): _strs(v, f"model_args.{m}") for m, v in raw["model_args"].items()}
    report = dict(raw.get("report") or {})
    unknown = sorted(
        set(report) - {"rare_items", "save_predictions", "diagnostics", "bootstrap_resamples", "equivalence_margin"}
    )
    if unknown:
        raise ValueError(f"unknown report keys {unknown}")
    if report.get("rare_items") is not None:
        kw["rare_items"] = RareItemsConfig(**report["rare_items"])
    for key in ("save_predictions", "diagnostics"):
        if key in report:
            kw[key] = bool(report[key])
    if report.get("bootstrap_resamples") is not None:
        kw["bootstrap_resamples"] = int(report["bootstrap_resamples"])
    if report.get("equivalence_margin") is not None:
        kw["equivalence_margin"] = float(report["equivalence_margin"])
    return SweepConfig(**kw)


def _load_yaml(path: Path) -> Any:
    """``yaml.safe_load`` (no Python tags) that also refuses aliases: a few lines of nested
    ``*alias`` lists expand exponentially once the config is copied (a MemoryError after 38 s).
    Sweep files need no aliases; a YAML error is said in one line, with its position."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not accepted in a sweep config", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(path.read_text(), Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{path}: not a usable sweep YAML: {err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a usable sweep YAML: {' '.join(str(err).split())}") from None


def load_config(path: Path, overrides: Optional[Mapping[str, Any]] = None) -> SweepConfig:
    """Read a .yaml/.yml or .json sweep file; ``overrides`` replace top-level keys."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        raw = _load_yaml(path)
    elif path.suffix == ".json":
        raw = read_json_file(path, "sweep config")  # bounded size and nesting (safe_json)
    else:
        raise ValueError(f"{path}: the sweep config must be .yaml, .yml or .json")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None

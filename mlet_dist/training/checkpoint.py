"""Sharded training checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint holds the model (sharded tables, projections, dense part), the fused and dense
optimizer state, the data position, the RNG state of every rank and the step. It is complete or
invisible: every rank writes into ``.step-N.tmp``, the ranks hash its files in parallel, then
rank 0 adds ``train_state.json`` and ``checksums.json`` and renames the directory to ``step-N``
(an atomic rename is the publication). The last ``keep`` are kept.

Resume takes the newest ``step-N`` that verifies against its checksums and loads; one that does
not (bit flips, a lost shard, a truncated or tampered ``.metadata``, a broken train_state.json) is
reported and skipped for the next older one. Loading never unpickles anything but plain values
(``distributed/safe_dcp.py``): a checkpoint is data, not code. ``.tmp`` dirs left by a crash are
ignored and removed.
"""

import json
import re
import shutil
import sys
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from mlet_dist.data.epoch_plan import Layout, check_record, num_batches, plan_in
from mlet_dist.digests import file_entry
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.exact_save import ExactStorageSavePlanner
from mlet_dist.distributed.safe_dcp import SafeFileSystemReader, UnsafeCheckpointError, safe_load
from mlet_dist.distributed.staging import HostCopyStager
from mlet_dist.training.checkpoint_digest import (
    CheckpointCorrupt,
    agreed_verdict,
    digest_share,
    gather_digests,
    verify_share,
    write_checksums,
)
from mlet_dist.training.faults import maybe_fail
from mlet_dist.training.loop_states import loaded_optimizer_state, without_absent_loop_states

_NAME = re.compile(r"^step-(\d{8})$")
TRAIN_STATE = "train_state.json"


@dataclass
class TrainPosition:
    """Where training stands: the next batch to run is ``batch_in_epoch`` of ``epoch``'s plan.

    ``data`` (epoch_plan.data_record) says which rows that plan holds and how the job that wrote
    it cut them (order, shuffle, seed, ranks, batch), so a job of another shape can find the rows
    the epoch has left; None in checkpoints of older versions."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    extra: Dict[str, Any] = field(default_factory=dict)
    global_batch_size: int = 0
    data: Optional[Dict[str, Any]] = None


class CheckpointError(RuntimeError):
    pass


def failure_causes(err: BaseException) -> List[BaseException]:
    """The per-rank exceptions inside DCP's CheckpointException (a BaseException), or ``err``."""
    if isinstance(err, CheckpointException):
        return [exc for exc, _trace in err.failures.values()]
    return [err]


def first_line(err: BaseException) -> str:
    causes = failure_causes(err)
    text = str(causes[0]) if causes else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0][:300]


def read_position(path: Path) -> TrainPosition:
    """train_state.json as a TrainPosition; CheckpointCorrupt when it is not one (wrong types,
    a batch outside its epoch): a tampered position falls back like any other damage."""
    try:
        position = TrainPosition(**json.loads((path / TRAIN_STATE).read_text()))
        _check_position(position)
    except (OSError, ValueError, TypeError, RecursionError) as err:
        raise CheckpointCorrupt(f"{TRAIN_STATE} is not a valid train state ({err})") from err
    return position


def _check_position(p: TrainPosition) -> None:
    for name in ("step", "epoch", "batch_in_epoch", "world_size", "global_batch_size"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "world_size"):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(p.extra, dict):
        raise ValueError(f"extra must be an object, got {type(p.extra).__name__}")
    if p.data is not None:
        check_record(p.data)
        batches = num_batches(
            plan_in(p.data), Layout(p.data["order"], p.data["world_size"], p.data["local_batch_size"])
        )
        if p.batch_in_epoch > batches:
            raise ValueError(f"batch_in_epoch {p.batch_in_epoch} lies past its epoch's {batches} batches")


def read_rng(path: Path) -> Optional[torch.Tensor]:
    """A rank's saved CPU RNG state (rng-rankN.json), or None where it is missing; CheckpointCorrupt
    where it is not one (torch.set_rng_state would raise deep inside)."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        if not (
            isinstance(values, list)
            and len(values) == len(torch.get_rng_state())
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in values)
        ):
            raise ValueError("not a CPU RNG state")
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointCorrupt(f"{path.name} is not an RNG state ({err})") from err
    return torch.tensor(values, dtype=torch.uint8)


def _init_lazy_optimizer_state(optimizer: CombinedOptimizer) -> None:
    """Dense optimizers (Adam, Adagrad) create state on their first step; DCP loads in place,
    so the state must exist first. A zero-gradient step creates it; the loaded values replace it."""
    for _, opt in optimizer.optimizers:
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()


@dataclass
class _Pending:
    """A checkpoint written (or being written) into ``tmp`` and not yet published."""

    tmp: Path
    final: Path
    position: TrainPosition
    rng: List[int]
    future: Optional[Future] = None


CHECKPOINT_MODES = ("auto", "sync", "async")
GB = 1e9


def local_state_bytes(value: Any) -> int:
    """Bytes of the tensors this rank holds in a state dict (its local shards of sharded ones):
    what an async save's staging copies."""
    if isinstance(value, ShardedTensor):
        return sum(s.tensor.nbytes for s in value.local_shards())
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(local_state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(local_state_bytes(v) for v in value)
    return 0


def host_memory_available() -> int:
    """Host memory the kernel could give now without swapping (MemAvailable)."""
    return psutil.virtual_memory().available


class CheckpointManager:
    def __init__(self, root: Path, env: DistEnv, keep: int = 2, mode: str = "sync") -> None:
        """``mode``: "sync" writes inside ``save``; "async" writes with ``dcp.async_save`` in a
        background thread on a gloo group of its own (collectives of two threads must not share
        a group); "auto" is async with CUDA (staging to host memory frees the GPU at once) and
        sync on CPU, where staging copies the rank's whole state (tables and optimizer state:
        measured +1.02x of the tables) while training goes on. Async on CPU therefore saves a
        step synchronously, with one warning, when that copy would not fit the host's free
        memory (``_staging_fits``)."""
        if keep < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {keep}")
        if mode not in CHECKPOINT_MODES:
            raise ValueError(f"--checkpoint-mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
        self.root = Path(root)
        self.env = env
        self.keep = keep
        use_async = mode == "async" or (mode == "auto" and env.device.type == "cuda")
        self._async_group = dist.new_group(backend="gloo") if use_async else None
        self._pending: Optional[_Pending] = None
        self._warned_sync = False

    def _published(self) -> List[Path]:
        if not self.root.is_dir():
            return []
        steps = {
            int(m.group(1)): p
            for p in self.root.iterdir()
            if (m := _NAME.match(p.name)) and (p / TRAIN_STATE).is_file()
        }
        return [steps[step] for step in sorted(steps)]

    def latest(self) -> Optional[Path]:
        published = self._published()
        return published[-1] if published else None

    def save(self, model: nn.Module, optimizer: CombinedOptimizer, position: TrainPosition) -> Path:
        """Write a checkpoint of this step. Async mode returns as soon as the state is staged
        (copied); the write goes on in the background and is published by ``finish_pending``
        (the trainer calls it at a step all ranks agree on). Until then it is an unpublished
        ``.tmp``, which a crash leaves behind and resume ignores."""
        self.finish_pending()
        final = self.root / f"step-{position.step:08d}"
        tmp = self.root / f".step-{position.step:08d}.tmp"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        pending = _Pending(tmp, final, position, torch.get_rng_state().tolist())
        if self._async_group is not None and self._staging_fits(state, position.step):
            written = dcp.async_save(
                state, checkpoint_id=str(tmp), process_group=self._async_group, async_stager=HostCopyStager()
            )
            # HostCopyStager stages before async_save returns, so DCP hands back the write's Future (an
            # AsyncSaveResponse is for a stager that stages in the background).
            assert isinstance(written, Future), f"dcp.async_save returned {type(written).__name__}"
            pending.future = written
            self._pending = pending
        else:
            dcp.save(state, checkpoint_id=str(tmp), planner=ExactStorageSavePlanner())  # no 2nd copy in RAM
            self._publish(pending)
        return final

    def _staging_fits(self, state: Dict[str, Any], step: int) -> bool:
        """Whether every rank's staging copy fits its share of the host's free memory (collective:
        all ranks save the same way). On CUDA the copy leaves device memory for host memory: always."""
        if self.env.device.type != "cpu":
            return True
        need = local_state_bytes(state)
        room = host_memory_available() // max(1, self.env.local_world_size)
        fits = torch.tensor([int(need < room)])
        dist.all_reduce(fits, op=dist.ReduceOp.MIN)
        if not fits.item() and self.env.is_main and not self._warned_sync:
            print(
                f"warning: --checkpoint-mode async on CPU copies each rank's state ({need / GB:.2f} GB on rank 0) "
                f"before writing it in the background, but the host has {room / GB:.2f} GB free per rank: "
                f"saving synchronously instead (from step {step}; no second copy)",
                file=sys.stderr,
            )
            self._warned_sync = True
        return bool(fits.item())

    def finish_pending(self) -> Optional[Path]:
        """Wait for the background write (if any) and publish it (collective)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if pending.future is not None:
            pending.future.result()
        self._publish(pending)
        return pending.final

    def _publish(self, p: "_Pending") -> None:
        (p.tmp / f"rng-rank{self.env.rank}.json").write_text(json.dumps(p.rng))
        maybe_fail("checkpoint", p.position.step, self.env.rank)
        dist.barrier()  # every file is written: hash them, each rank its share
        digests = gather_digests(digest_share(p.tmp, self.env.rank, self.env.world_size))
        if self.env.is_main:
            (p.tmp / TRAIN_STATE).write_text(json.dumps(asdict(p.position), indent=1, sort_keys=True))
            digests[TRAIN_STATE] = file_entry(p.tmp / TRAIN_STATE)
            write_checksums(p.tmp, digests)
            shutil.rmtree(p.final, ignore_errors=True)
            p.tmp.rename(p.final)
            for old in self._published()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, path: Path, model: nn.Module, optimizer: CombinedOptimizer) -> TrainPosition:
        """Verify and load one checkpoint (collective). CheckpointCorrupt: the checkpoint is
        damaged (skip it); CheckpointError: it is intact but does not fit this job."""
        verdict = agreed_verdict(verify_share(path, self.env.rank, self.env.world_size))
        if verdict:  # every rank skips or loads the same checkpoint
            raise CheckpointCorrupt(verdict)
        position, rng, local, saved_keys = TrainPosition(), None, None, set()
        try:  # files that verify but are not a position, an RNG state or safe metadata: damage too
            position, rng = read_position(path), read_rng(path / f"rng-rank{self.env.rank}.json")
            # DCP would re-raise a refusal here as plain text
            saved_keys = set(SafeFileSystemReader(path).read_metadata().state_dict_metadata)
        except CheckpointCorrupt as err:
            local = str(err)
        except UnsafeCheckpointError as err:
            local = f"refused: {err}"
        except Exception as err:  # noqa: BLE001 - a .metadata that does not unpickle at all
            local = f".metadata unreadable ({type(err).__name__}: {first_line(err)})"
        verdict = agreed_verdict(local)
        if verdict:
            raise CheckpointCorrupt(verdict)
        _init_lazy_optimizer_state(optimizer)
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        request, absent = without_absent_loop_states(state, saved_keys)
        if absent and self.env.is_main:
            print(
                f"[checkpoint] {path.name} has no fbgemm CPU loop states ({len(absent)} tensors: written by the "
                "JIT path, on CUDA or before the loop); they start at zero, which the update does not read",
                flush=True,
            )
        try:
            safe_load(request, path)
        except (Exception, CheckpointException) as err:  # DCP's CheckpointException is a BaseException
            causes = failure_causes(err)
            if any(isinstance(c, UnsafeCheckpointError) for c in causes):
                raise CheckpointCorrupt(f"refused: {first_line(err)}") from err
            raise CheckpointError(
                f"cannot load checkpoint {path} (written by {position.world_size} ranks) into this job "
                f"({self.env.world_size} ranks): {first_line(err)}. DCP reshards tables "
                "between table-/row-wise plans and world sizes, but not a change of column-wise shard "
                "count with row-wise optimizer state, nor per-shard projection state of another "
                "plan, nor another model shape: resume with the original world size, plan "
                "(run_dir/plan.json) and model flags, or start fresh with --no-resume."
            ) from err
        model.load_state_dict(request["model"])
        optimizer.load_state_dict(loaded_optimizer_state(state, request))
        if rng is not None and position.world_size == self.env.world_size:
            torch.set_rng_state(rng)
        return position

    def load_newest_intact(
        self, model: nn.Module, optimizer: CombinedOptimizer
    ) -> Tuple[Optional[Path], TrainPosition, List[str]]:
        """The newest checkpoint that verifies and loads: (its path or None, position, one line
        per damaged checkpoint skipped on the way). All damaged: CheckpointError (no silent
        fresh start over a run's history)."""
        skipped: List[str] = []
        candidates = list(reversed(self._published()))
        for path in candidates:
            try:
                return path, self.load(path, model, optimizer), skipped
            except CheckpointCorrupt as err:
                skipped.append(f"{path.name}: {err}")
        if candidates:
            raise CheckpointError(
                f"no intact checkpoint in {self.root} ({'; '.join(skipped)}); start fresh with "
                "--no-resume or another --run-dir"
            )
        return None, TrainPosition(world_size=self.env.world_size), skipped

    def clean_torn(self) -> List[str]:
        """Remove ``.tmp`` checkpoints left by a crash (rank 0); returns their names."""
        if not self.env.is_main or not self.root.is_dir():
            return []
        torn = [p for p in self.root.iterdir() if p.name.startswith(".step-") and p.name.endswith(".tmp")]
        for p in torn:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in torn]

"""How a rank that fails ends the job: promptly, with the first error printed once.

A rank that raises while its peers wait in a collective must not wait itself (no barrier on the
failure path): it writes its traceback to ``RUN_DIR/errors/rank<r>.log``, prints one line, and
exits at once, which closes its connections, so the peers' collectives fail within seconds and
torchrun stops the rest. The rank that fails first claims ``errors/first-<attempt>`` (an
exclusive create on the shared run dir) and is the only one to print; the peers' "connection closed" errors
are logged to their files but not printed again. An attempt is named by torchelastic's run id
and restart count and by a fresh id that rank 0 gives every rank at start (plain torchrun's run
id is "none" on every launch: a second failing launch found the first one's record and printed
nothing).
"""

import os
import sys
import traceback
import uuid
from pathlib import Path
from typing import Optional

from torch.distributed.checkpoint.api import CheckpointException

from mlet_dist.errors import UserError
from mlet_dist.training.checkpoint import failure_causes, first_line

USER_ERROR_EXIT = 2  # a mistake the user can fix, said in one line (argparse uses 2 too)
FAILURE_EXIT = 1
ERRORS_DIR = "errors"
ATTEMPT_ENV = "MLET_ATTEMPT_ID"  # this launch's fresh id, set by agree_on_attempt_id


def checkpoint_write_message(err: BaseException) -> Optional[str]:
    """DCP's CheckpointException as its first cause in one line (its own str() is a
    "CheckpointException ranks:dict_keys([0])" repr and the causes' tracebacks): a full disk
    says "No space left on device" and where, instead of a repr."""
    if not isinstance(err, CheckpointException):
        return None
    causes = failure_causes(err)
    what = type(causes[0]).__name__ if causes else type(err).__name__
    return f"error: a checkpoint write failed on rank(s) {sorted(err.failures)}: {what}: {first_line(err)}"


def _os_errors_only(err: BaseException) -> bool:
    return all(isinstance(cause, OSError) for cause in failure_causes(err))


def user_message(err: BaseException) -> Optional[str]:
    """The one-line message of a user error (UserError, or SystemExit carrying 'error: ...')."""
    if isinstance(err, UserError):
        return f"error: {err}"
    if isinstance(err, SystemExit) and isinstance(err.code, str):
        return err.code if err.code.startswith("error:") else f"error: {err.code}"
    return None


def agree_on_attempt_id() -> None:
    """Collective at start: rank 0's fresh id for this launch, the same on every rank (a failing
    rank cannot ask its peers then: the group may be broken)."""
    import torch.distributed as dist

    choice = [uuid.uuid4().hex[:12]]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    os.environ[ATTEMPT_ENV] = choice[0]


def _attempt() -> str:
    """This launch attempt (torchrun's run id and restart count, and the fresh id), so that a
    resumed or relaunched run's failure is printed even though an earlier attempt claimed first place."""
    run_id = "".join(c for c in os.environ.get("TORCHELASTIC_RUN_ID", "none") if c.isalnum() or c in "-_")
    fresh = "".join(c for c in os.environ.get(ATTEMPT_ENV, "") if c.isalnum())
    return f"{run_id[:64]}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}" + (f"-{fresh}" if fresh else "")


def _claim_first(errors: Path) -> bool:
    try:
        fd = os.open(errors / f"first-{_attempt()}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def report_failure(err: BaseException, rank: int, world_size: int, run_dir: Optional[Path]) -> int:
    """Log and (if first) print the failure of this rank; returns the exit code to use."""
    message = user_message(err)
    code = USER_ERROR_EXIT if message else FAILURE_EXIT
    if isinstance(err, KeyboardInterrupt):
        message, code = "error: interrupted", 130
    where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
    full = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    log: Optional[Path] = None
    log_problem = ""
    first = rank == 0
    if run_dir is not None:
        try:
            errors = Path(run_dir) / ERRORS_DIR
            errors.mkdir(parents=True, exist_ok=True)
            log = errors / f"rank{rank}.log"
            log.write_text(full)
            first = _claim_first(errors) or world_size == 1
        except OSError as log_err:  # the disk that failed the checkpoint fails the log too
            log, log_problem = None, log_err.strerror or str(log_err)
    if not first:
        return code
    disk = checkpoint_write_message(err) if message is None else None
    if disk is not None and (log is not None or _os_errors_only(err)):  # an OSError needs no traceback
        where += f"; full traceback in {log}" if log else f"; no traceback log ({log_problem})" if log_problem else ""
        print(disk + where, file=sys.stderr, flush=True)
        return code
    if message is None:
        lines = str(err).strip().splitlines()
        message = f"error: {type(err).__name__}: {lines[0][:500] if lines else ''}"
        message += f"{where}; full traceback in {log}" if log else f"{where}\n{full}"
    elif where:
        message += where
    print(message, file=sys.stderr, flush=True)
    return code


def exit_now(code: int) -> None:
    """Leave without teardown collectives or atexit hooks that could wait on a peer."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

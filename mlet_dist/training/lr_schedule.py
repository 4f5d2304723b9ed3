"""Learning-rate warm-up and decay, as a pure function of the global step.

The schedule is MLPerf's reference DLRM (``LRPolicyScheduler``): a linear warm-up, then a
polynomial decay of power 2 over a window of steps. It is stateless on purpose: the lr of step t
is ``base lr x lr_multiplier(config, t)``, so a resumed run (at any world size) continues the
schedule from its restored global step with no new checkpoint state. TorchRec's WarmupOptimizer
does not fit: it keeps its own step counter in the optimizer state and sets one lr on every
param group, while the tables and the dense part here have lrs of their own.

Steps count from 1, as the reference's ``_step_count`` does: the first training step is step 1.
The tables' fused optimizer updates them inside ``backward()``, with the lr fbgemm holds then,
which TorchRec copies from ``param_groups[0]["lr"]`` in the fused optimizer's ``zero_grad()`` and
``step()``; so the lr of step t is set before that step's ``zero_grad()`` (``LRSchedule.apply``).

One deliberate difference from the reference: between the end of the warm-up and the start of
the decay the lr is the full base lr; the reference holds ``(W-1)/W`` of it there whenever a
decay is set (its "freeze at the last lr" branch). After the decay window the lr stays at the
window's last value, ``base / D**2``, as in the reference.
"""

from dataclasses import dataclass, field
from typing import Any, MutableMapping, Sequence, Tuple

from mlet_dist.config_flags import flag

APPLIES_TO = ("all", "dense", "embedding")


@dataclass
class LRScheduleConfig:
    """Warm-up and decay steps; 0/0/0 is a constant lr (no schedule)."""

    warmup_steps: int = field(
        default=0,
        metadata=flag(
            "--lr-warmup-steps", help="linear warm-up of the lr from lr/N at step 1 to the full lr at step N (0: none)"
        ),
    )
    decay_start: int = field(
        default=0,
        metadata=flag(
            "--lr-decay-start", help="first step of the lr decay (>= --lr-warmup-steps; needs --lr-decay-steps)"
        ),
    )
    decay_steps: int = field(
        default=0,
        metadata=flag(
            "--lr-decay-steps",
            help="polynomial decay (power 2) of the lr over this many steps from --lr-decay-start, "
            "then held at lr/N^2 (0: no decay)",
        ),
    )
    applies_to: str = field(
        default="all",
        metadata=flag(
            "--lr-schedule-applies-to",
            choices=APPLIES_TO,
            help="which lrs follow the schedule: all, dense (--dense-lr: MLPs, projections) or embedding "
            "(--embedding-lr: the tables)",
        ),
    )

    def __post_init__(self) -> None:
        for name, value in (
            ("--lr-warmup-steps", self.warmup_steps),
            ("--lr-decay-start", self.decay_start),
            ("--lr-decay-steps", self.decay_steps),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 steps (0: off), got {value}")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(
                f"--lr-schedule-applies-to must be one of {', '.join(APPLIES_TO)}, got {self.applies_to!r}"
            )
        if self.decay_start and not self.decay_steps:
            raise ValueError(f"--lr-decay-start {self.decay_start} needs --lr-decay-steps > 0 (the decay's length)")
        if self.decay_steps and self.decay_start < self.warmup_steps:
            raise ValueError(
                f"--lr-decay-start ({self.decay_start}) must be >= --lr-warmup-steps "
                f"({self.warmup_steps}): the warm-up ends before the decay starts"
            )

    @property
    def constant(self) -> bool:
        return not (self.warmup_steps or self.decay_steps)

    def schedules(self, role: str) -> bool:
        """Does the schedule drive the lr of ``role`` ("dense" or "embedding")?"""
        return self.applies_to in ("all", role)


def lr_multiplier(config: LRScheduleConfig, step: int) -> float:
    """The factor on the base lr for training step ``step`` (1 = the first step of the run)."""
    if step < config.warmup_steps:
        return step / config.warmup_steps
    if not config.decay_steps or step < config.decay_start:
        return 1.0
    left = max(config.decay_start + config.decay_steps - step, 1)  # held at the window's last value after it
    return (left / config.decay_steps) ** 2


ParamGroup = MutableMapping[str, Any]


class LRSchedule:
    """Sets each scheduled param group's lr to its base lr x the multiplier of the coming step."""

    def __init__(self, groups: Sequence[Tuple[ParamGroup, float]], config: LRScheduleConfig) -> None:
        self.groups, self.config = list(groups), config

    def apply(self, step: int) -> None:
        """Call before step ``step``'s ``zero_grad()`` (where the fused tables take their lr).
        A constant schedule touches nothing: the optimizers keep the lrs they were built with."""
        if not self.config.constant:
            self.set_multiplier(lr_multiplier(self.config, step))

    def set_multiplier(self, multiplier: float) -> None:
        for group, base_lr in self.groups:
            group["lr"] = base_lr * multiplier

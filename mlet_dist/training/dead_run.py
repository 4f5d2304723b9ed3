"""Dead-run detection: a run whose validation AUC never leaves a small band around 0.5, and a run
that memorises its training rows, told apart because they need opposite remedies.

Why: a DLRM run can stay at (or next to) the constant predictor for its whole budget (issue 20:
2 of 3 seeds of MLET k=64 -> d=4 on a 26-feature planted dataset sat at val AUC 0.53-0.54), and a
sweep that averages such a seed with live ones reports a configuration as merely worse, when it
did not train at all. Issue 28 found the other failure behind the same low val AUC: the train loss
falls while the val loss rises above the constant predictor's, i.e. the model fits the training
rows and does not generalise; the stuck-model hint (another init, a lower lr to leave the saddle)
points the wrong way there. The detector only observes the evaluation points the trainer already
has; it never stops a run (a slow start that leaves the band later is recorded as recovered).

A run is *dead* when it has had at least ``points`` evaluation points and its best validation AUC
so far is still within ``band`` of 0.5: the selected model (the best point) is then no better
than a constant prediction plus noise. The label entropy H (the constant predictor's val logloss,
val logloss / val NE) tells the two kinds apart, with a margin of ``MARGIN`` x H:

* *stuck*: dead, and the train loss since the previous evaluation point is still at H (it never
  learnt anything, on the training rows either);
* *memorising*: at some point the val logloss has risen above its minimum so far and is at or
  above H (worse than the constant predictor on unseen rows), while the train loss has fallen below
  its value at that minimum. This is flagged whether or not the run is dead: the best point before
  it is still the selected model, but the training that follows it is wasted or harmful.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

DEFAULT_BAND = 0.05  # |val AUC - 0.5|; issue 20's dead seeds were at 0.53-0.54, live ones >= 0.6
DEFAULT_POINTS = 3  # evaluation points before a verdict
MARGIN = 0.02  # of the label entropy: losses closer than this count as equal (batch noise ~0.5 %)

STUCK_HINT = (
    "the model is at or next to the constant predictor. See reports/small_d/README.md (MLET at small d: "
    "--mlet-init; lower --embedding-lr)"
)
MEMORISING_HINT = (
    "the model fits the training rows and does not generalise; the best point before this stays "
    "the selected model. Give it less capacity to memorise (smaller --bottom-mlp/--top-mlp, "
    "a lower --embedding-lr) or fewer passes (--early-stop-patience); see reports/small_d/README.md"
)


def _number(value: Optional[float]) -> Optional[float]:
    """A finite float, else None (a NaN metric carries no signal)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass
class DeadRunDetector:
    """Feed it every evaluation point (``observe``); ``verdict()`` says whether the run is dead now
    and whether it memorised; ``observe`` returns a one-line warning the first time either happens."""

    band: float = DEFAULT_BAND
    points: int = DEFAULT_POINTS
    margin: float = MARGIN
    _aucs: List[float] = field(default_factory=list)
    _steps: List[int] = field(default_factory=list)
    _val_losses: List[Optional[float]] = field(default_factory=list)
    _entropies: List[Optional[float]] = field(default_factory=list)
    _train_losses: List[Optional[float]] = field(default_factory=list)
    _fired_at: Optional[int] = None
    _memorising_at: Optional[int] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.band < 0.5:
            raise ValueError(f"dead-run band must be in (0, 0.5), got {self.band}")
        if self.points < 1:
            raise ValueError(f"dead-run points must be >= 1, got {self.points}")
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"dead-run margin must be in (0, 1), got {self.margin}")

    def is_dead(self) -> bool:
        """At least ``points`` evaluations and the best val AUC still within the band of 0.5."""
        return len(self._aucs) >= self.points and max(self._aucs) <= 0.5 + self.band

    def label_entropy(self) -> Optional[float]:
        """The constant predictor's val logloss, from the latest point that has logloss and NE."""
        known = [h for h in self._entropies if h is not None]
        return known[-1] if known else None

    def is_stuck(self) -> bool:
        """Dead, and the latest train loss is still at the label entropy (within the margin)."""
        entropy, train = self.label_entropy(), self._train_losses[-1] if self._train_losses else None
        return self.is_dead() and entropy is not None and train is not None and train >= entropy * (1 - self.margin)

    def _memorising_now(self) -> bool:
        """The latest point: val loss up from its minimum and >= H, train loss down from its value there."""
        entropy, val, train = self.label_entropy(), self._val_losses[-1], self._train_losses[-1]
        earlier = [(v, i) for i, v in enumerate(self._val_losses[:-1]) if v is not None]
        if entropy is None or val is None or train is None or not earlier:
            return False
        best_val, at = min(earlier)
        train_then = self._train_losses[at]
        tolerance = self.margin * entropy
        return (
            val >= entropy
            and val - best_val >= tolerance
            and train_then is not None
            and train_then - train >= tolerance
        )

    def observe(
        self,
        step: int,
        val_auc: float,
        *,
        val_logloss: Optional[float] = None,
        val_ne: Optional[float] = None,
        train_loss: Optional[float] = None,
    ) -> Optional[str]:
        """Record one evaluation point (``train_loss``: the mean since the previous point); the
        warning line the first time the run is dead or memorises, else None. A NaN AUC (one class in
        the split) counts as in the band: it carries no signal either."""
        auc = _number(val_auc)
        logloss, ne = _number(val_logloss), _number(val_ne)
        self._aucs.append(0.5 if auc is None else auc)
        self._steps.append(int(step))
        self._val_losses.append(logloss)
        self._entropies.append(logloss / ne if logloss is not None and ne else None)
        self._train_losses.append(_number(train_loss))
        if self._memorising_at is None and self._memorising_now():
            self._memorising_at = int(step)
            if self._fired_at is None and self.is_dead():
                self._fired_at = int(step)
            return self._memorising_warning(step)
        if self._fired_at is None and self.is_dead():
            self._fired_at = int(step)
            return self._dead_warning(step)
        return None

    def _dead_warning(self, step: int) -> str:
        train, entropy = self._train_losses[-1], self.label_entropy()
        losses = (
            ""
            if train is None or entropy is None
            else (f", train loss {train:.4f} {'at' if self.is_stuck() else 'below'} the label entropy {entropy:.4f}")
        )
        return (
            f"warning: dead run? val AUC has stayed within 0.5 ± {self.band:g} for {len(self._aucs)} "
            f"evaluation points (best {max(self._aucs):.4f}, steps {self._steps[0]}..{step}{losses}): " + STUCK_HINT
        )

    def _memorising_warning(self, step: int) -> str:
        best = max(range(len(self._aucs)), key=self._aucs.__getitem__)
        return (
            f"warning: memorising? at step {step} the train loss fell to {self._train_losses[-1]:.4f} while "
            f"the val logloss rose to {self._val_losses[-1]:.4f}, at or above the constant predictor's "
            f"{self.label_entropy():.4f} (val AUC {self._aucs[-1]:.4f}; best {self._aucs[best]:.4f} at step "
            f"{self._steps[best]}): " + MEMORISING_HINT
        )

    def kind(self) -> Optional[str]:
        """memorising (ever seen), stuck (dead at the label entropy), dead (dead, no loss data to
        tell which), or None: a live run that never memorised."""
        if self._memorising_at is not None:
            return "memorising"
        if self.is_stuck():
            return "stuck"
        return "dead" if self.is_dead() else None

    def verdict(self) -> Dict[str, Any]:
        """What summary.json records under ``dead_run``."""
        return {
            "dead": self.is_dead(),
            "kind": self.kind(),
            "memorising": self._memorising_at is not None,
            "first_memorising_step": self._memorising_at,
            "band": self.band,
            "points_required": self.points,
            "points": len(self._aucs),
            "best_val_auc": max(self._aucs) if self._aucs else None,
            "label_entropy": self.label_entropy(),
            "last_train_loss": self._train_losses[-1] if self._train_losses else None,
            "first_flagged_step": self._fired_at,
            "recovered": self._fired_at is not None and not self.is_dead(),
        }

    def state(self) -> Dict[str, Any]:
        """For checkpoints, so a resumed run keeps its history."""
        return {
            "aucs": list(self._aucs),
            "steps": list(self._steps),
            "fired_at": self._fired_at,
            "val_losses": list(self._val_losses),
            "entropies": list(self._entropies),
            "train_losses": list(self._train_losses),
            "memorising_at": self._memorising_at,
        }

    def load_state(self, state: Dict[str, Any]) -> None:
        """A state from before issue 28 has no losses: those points count as unknown (None)."""
        self._aucs = [float(a) for a in state.get("aucs", [])]
        self._steps = [int(s) for s in state.get("steps", [])]
        self._val_losses = self._history(state, "val_losses")
        self._entropies = self._history(state, "entropies")
        self._train_losses = self._history(state, "train_losses")
        fired, memorising = state.get("fired_at"), state.get("memorising_at")
        self._fired_at = None if fired is None else int(fired)
        self._memorising_at = None if memorising is None else int(memorising)

    def _history(self, state: Dict[str, Any], key: str) -> List[Optional[float]]:
        """One loss history as long as the AUC history; unknown (None) where it is missing or
        does not match it (a state from before issue 28)."""
        values = state.get(key)
        if not isinstance(values, list) or len(values) != len(self._aucs):
            return [None] * len(self._aucs)
        return [_number(v) if isinstance(v, (int, float)) else None for v in values]


def dead_run_of(summary: Optional[Dict[str, Any]]) -> Optional[bool]:
    """A run summary's verdict for reports: True/False, None when the run predates the detector."""
    verdict = (summary or {}).get("dead_run")
    if not isinstance(verdict, dict) or "dead" not in verdict:
        return None
    return bool(verdict["dead"])


def memorised_of(summary: Optional[Dict[str, Any]]) -> Optional[bool]:
    """Whether a run summary's detector saw memorisation; None when the run predates issue 28's check."""
    verdict = (summary or {}).get("dead_run")
    if not isinstance(verdict, dict) or "memorising" not in verdict:
        return None
    return bool(verdict["memorising"])

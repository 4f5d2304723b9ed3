"""Dead-run detection: a run whose validation AUC never leaves a small band around 0.5.

Why: a DLRM run can stay at (or next to) the constant predictor for its whole budget (issue 20:
2 of 3 seeds of MLET k=64 -> d=4 on a 26-feature planted dataset sat at val AUC 0.53-0.54), and a
sweep that averages such a seed with live ones reports a configuration as merely worse, when it
did not train at all. The detector only observes the evaluation points the trainer already has;
it never stops a run (a slow start that leaves the band later is recorded as recovered).

A run is *dead* when it has had at least ``points`` evaluation points and its best validation AUC
so far is still within ``band`` of 0.5: the selected model (the best point) is then no better
than a constant prediction plus noise. The train loss is not used: on small planted data a
healthy run's first-epoch loss sits within 1 % of the label entropy (reports/small_d/README.md).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

DEFAULT_BAND = 0.05  # |val AUC - 0.5|; issue 20's dead seeds were at 0.53-0.54, live ones >= 0.6
DEFAULT_POINTS = 3  # evaluation points before a verdict


@dataclass
class DeadRunDetector:
    """Feed it every evaluation point's validation AUC (``observe``); ``verdict()`` says whether
    the run is dead now, ``observe`` returns a one-line warning the first time it becomes so."""

    band: float = DEFAULT_BAND
    points: int = DEFAULT_POINTS
    _aucs: List[float] = field(default_factory=list)
    _steps: List[int] = field(default_factory=list)
    _fired_at: Optional[int] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.band < 0.5:
            raise ValueError(f"dead-run band must be in (0, 0.5), got {self.band}")
        if self.points < 1:
            raise ValueError(f"dead-run points must be >= 1, got {self.points}")

    def is_dead(self) -> bool:
        """At least ``points`` evaluations and the best val AUC still within the band of 0.5."""
        return len(self._aucs) >= self.points and max(self._aucs) <= 0.5 + self.band

    def observe(self, step: int, val_auc: float) -> Optional[str]:
        """Record one evaluation point; the warning line the first time the run is dead, else None.
        A NaN AUC (one class in the split) counts as in the band: it carries no signal either."""
        self._aucs.append(0.5 if val_auc != val_auc else float(val_auc))
        self._steps.append(int(step))
        if self._fired_at is None and self.is_dead():
            self._fired_at = int(step)
            return (f"warning: dead run? val AUC has stayed within 0.5 ± {self.band:g} for {len(self._aucs)} "
                    f"evaluation points (best {max(self._aucs):.4f}, steps {self._steps[0]}..{step}): the model is "
                    "at or next to the constant predictor. See reports/small_d/README.md (MLET at small d: "
                    "--mlet-init; lower --embedding-lr)")
        return None

    def verdict(self) -> Dict[str, Any]:
        """What summary.json records under ``dead_run``."""
        return {
            "dead": self.is_dead(),
            "band": self.band,
            "points_required": self.points,
            "points": len(self._aucs),
            "best_val_auc": max(self._aucs) if self._aucs else None,
            "first_flagged_step": self._fired_at,
            "recovered": self._fired_at is not None and not self.is_dead(),
        }

    def state(self) -> Dict[str, Any]:
        """For checkpoints, so a resumed run keeps its history."""
        return {"aucs": list(self._aucs), "steps": list(self._steps), "fired_at": self._fired_at}

    def load_state(self, state: Dict[str, Any]) -> None:
        self._aucs = [float(a) for a in state.get("aucs", [])]
        self._steps = [int(s) for s in state.get("steps", [])]
        fired = state.get("fired_at")
        self._fired_at = None if fired is None else int(fired)


def dead_run_of(summary: Optional[Dict[str, Any]]) -> Optional[bool]:
    """A run summary's verdict for reports: True/False, None when the run predates the detector."""
    verdict = (summary or {}).get("dead_run")
    if not isinstance(verdict, dict) or "dead" not in verdict:
        return None
    return bool(verdict["dead"])

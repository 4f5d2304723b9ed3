"""The run directory: metrics.jsonl (one JSON object per event) and summary.json, rank 0 only."""

import json
import time
from pathlib import Path
from typing import Any, Dict


class RunDirectory:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": time.time(), **fields}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_json(self, name: str, payload: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path / name)

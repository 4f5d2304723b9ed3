"""Table specs for offline planning: a data_prep ``meta.json`` (or its dataset directory) or a
small spec file

    {"name": "criteo-kaggle", "table_sizes": {"C1": 1460, ...}, "dense_features": 13}

``dense_features`` is a count or a list of names (as in meta.json); ``sparse_features``, when
given, fixes the table order (train.py orders tables by meta.json's ``sparse_features``).
JSON with a ``format_version`` is a meta.json and must pass data_prep's meta.json check
(``validate_meta``, the one read_meta uses): a dataset training would refuse is not planned for.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Union

from data_prep.safe_json import read_json_file

PathLike = Union[str, Path]
INT64_MAX = (1 << 63) - 1  # ids, row counts and byte offsets are int64 in torch, TorchRec and fbgemm


class SpecError(ValueError):
    """A table spec that cannot be planned from; the message names the file and the problem."""


@dataclass
class TableSpec:
    table_sizes: Dict[str, int]
    num_dense: int
    name: str
    source: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.table_sizes.values())


def load_table_spec(path: PathLike) -> TableSpec:
    from data_prep.dataset_format import looks_raw, meta_file, raw_file_message

    path = Path(path)
    if looks_raw(path):
        raise SpecError(raw_file_message(path, "--spec"))
    path = meta_file(path)
    if not path.is_file():
        raise SpecError(f"table spec {path} does not exist (give a meta.json, its dataset dir, or a spec file)")
    data = read_json_file(path, "table spec", error=SpecError)
    return table_spec_from_dict(data, str(path))


def table_spec_from_dict(data: Any, source: str = "<dict>") -> TableSpec:
    from data_prep.dataset_format import validate_meta

    if not isinstance(data, dict) or not isinstance(data.get("table_sizes"), dict) or not data["table_sizes"]:
        raise SpecError(f'{source}: needs a non-empty "table_sizes" object {{feature: rows}}')
    if "format_version" in data:
        try:
            validate_meta(data, source)
        except ValueError as err:
            raise SpecError(str(err)) from None
    sizes = data["table_sizes"]
    order = data.get("sparse_features") or list(sizes)
    missing = [f for f in order if f not in sizes]
    if missing:
        raise SpecError(f"{source}: sparse_features {missing} have no table_sizes entry")
    table_sizes: Dict[str, int] = {}
    for feature in order:
        rows = sizes[feature]
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= INT64_MAX:
            raise SpecError(
                f"{source}: table_sizes[{feature!r}] must be a positive integer <= 2**63-1 "
                f"(ids are int64), got {rows!r}"
            )
        table_sizes[feature] = rows
    dense = data.get("dense_features", 13)
    num_dense = len(dense) if isinstance(dense, list) else dense
    if isinstance(num_dense, bool) or not isinstance(num_dense, int) or num_dense < 1:
        raise SpecError(f"{source}: dense_features must be a positive count or a list of names, got {dense!r}")
    name = str(data.get("name") or data.get("dataset") or Path(source).stem)
    return TableSpec(table_sizes=table_sizes, num_dense=num_dense, name=name, source=source)

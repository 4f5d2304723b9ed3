"""The raw-value -> id vocabulary of a prepared dataset, saved next to it (FORMAT.md, "Vocabulary").

mlet-prep builds each feature's vocabulary from the train split and used to drop it after
writing; without it a later day of logs or a raw serving request cannot be given the ids the
model was trained with. The writer saves one parquet file per exact feature (``value`` as in
the input, its ``key`` and its ``id``; keys ascending) and describes hashed features in
meta.json; ``Vocabulary.load(DIR).encode(feature, raw_values)`` gives the same ids as the
preparation did, the out-of-vocabulary id 0 for values it did not keep, and counts them.
No pickle: parquet and JSON only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import textio
from data_prep.dataset_format import read_meta

PathLike = Union[str, Path]
VOCAB_DIR = "vocab"
OOV_ID = 0
KINDS = ("hex8", "token7")  # how raw values become keys (textio.parse_hex8 / parse_token7)


def vocab_file(feature: str) -> str:
    """Relative path (as stored in meta.json) of one feature's vocabulary."""
    return f"{VOCAB_DIR}/{feature}.parquet"


# -- keys <-> raw values ----------------------------------------------------------------------


def raw_to_keys(kind: str, values: Sequence[Union[str, bytes]]) -> Tuple[np.ndarray, np.ndarray]:
    """(valid mask, int64 keys) of raw values, exactly as the preparation parses them."""
    if kind not in KINDS:
        raise ValueError(f"unknown value kind {kind!r}; expected one of {KINDS}")
    raw = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    lengths = np.fromiter((len(v) for v in raw), np.int64, len(raw))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    arr = np.frombuffer(b"".join(raw) + b"\0" * 16, np.uint8)  # the parsers read 8 bytes per value
    return (textio.parse_hex8 if kind == "hex8" else textio.parse_token7)(arr, starts, ends)


_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), np.uint16)  # byte -> its 2 digits


def keys_to_raw(kind: str, keys: np.ndarray) -> pa.Array:
    """Raw values (strings) of keys: the inverse of ``raw_to_keys`` (vectorised)."""
    keys = np.asarray(keys, np.int64)
    if kind == "hex8":  # each byte of the 32-bit value (most significant first) -> its two hex digits
        big_endian = keys.astype(np.uint32).astype(">u4").view(np.uint8)
        chars = _HEX_PAIRS[big_endian].view(np.uint8).reshape(-1, 8)
        lengths = np.where(keys < 0, 0, 8)
        if len(keys) and lengths.all():  # the usual case: no empty value, the digits are the data
            offsets = np.arange(0, 8 * len(keys) + 1, 8, dtype=np.int32)
            return pa.Array.from_buffers(pa.string(), len(keys), [None, pa.py_buffer(offsets), pa.py_buffer(chars)])
    elif kind == "token7":
        chars = (keys.view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8").view(np.uint8).reshape(-1, 8)
        lengths = chars[:, 7].astype(np.int64)
    else:
        raise ValueError(f"unknown value kind {kind!r}; expected one of {KINDS}")
    data = chars[:, :8][np.arange(chars.shape[1])[None, :8] < lengths[:, None]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(keys), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


# -- writing ----------------------------------------------------------------------------------


def write_feature_vocab(out_dir: Path, feature: str, kind: str, sorted_keys: np.ndarray, ids: np.ndarray) -> str:
    """One exact feature's vocabulary as parquet (value, key, id), keys ascending; its path."""
    rel = vocab_file(feature)
    (out_dir / VOCAB_DIR).mkdir(exist_ok=True)
    table = pa.table(
        {
            "value": keys_to_raw(kind, sorted_keys),
            "key": pa.array(np.asarray(sorted_keys, np.int64)),
            "id": pa.array(np.asarray(ids, np.int64)),
        }
    )
    # No dictionary pages: keys, ids and values are all distinct, so the writer's dictionary attempt
    # only cost time (2.3x) and bytes (1.6x larger than plain + zstd).
    pq.write_table(table, out_dir / rel, compression="zstd", use_dictionary=False)
    return rel


def entry_sha256(feature: str, kind: str, hashed: bool, table_size: int, path: Optional[Path]) -> str:
    """meta.json's ``sha256`` of a feature's vocabulary: the feature, its kind, hashed flag and table
    size (one line of sorted-key JSON), then the vocabulary file's bytes (none for a hashed feature).
    Binding all of them catches two features' files swapped, permuted ids, and a flag or size edited
    in meta.json, none of which the structural checks (``arrays_problem``) can see."""
    head = json.dumps(
        {"feature": feature, "hashed": bool(hashed), "kind": kind, "table_size": int(table_size)}, sort_keys=True
    )
    h = hashlib.sha256(head.encode() + b"\n")
    if path is not None:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def digest_problem(root: Path, feature: str, entry: Mapping[str, Any], table_size: int) -> Optional[str]:
    """Why a feature's vocabulary does not match the sha256 meta.json records for it (None: it does)."""
    path = None if entry.get("hashed") else root / entry["file"]
    if entry_sha256(feature, entry.get("kind", ""), bool(entry.get("hashed")), table_size, path) == entry.get("sha256"):
        return None
    what = "its hashed flag or table size" if path is None else f"{entry['file']}, its hashed flag or table size"
    return (
        f"the vocabulary of {feature} does not match its sha256 in meta.json ({what} changed since "
        "mlet-prep wrote it: a swapped, edited or damaged file); re-run mlet-prep"
    )


def unsealed_warning(root: Path, entries: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The warning for a dataset prepared before meta.json recorded vocabulary digests (None when it
    records them). Warned, not refused: re-preparing changes meta.json, and a serving directory
    accepts only the meta.json its model was trained with, so refusing would strand those models."""
    if any("sha256" in e for e in entries.values()):
        return None
    return (
        f"{root}/meta.json records no vocabulary sha256 (prepared before they were recorded): a swapped or "
        "edited vocabulary file cannot be detected; re-run mlet-prep to record them"
    )


def arrays_problem(keys: np.ndarray, ids: np.ndarray, table_size: int, listed: Any) -> Optional[str]:
    """Why a vocabulary file's (keys, ids) cannot encode (None: they can): another count of values than
    meta.json lists, keys not strictly ascending, or ids not distinct in [1, table_size). One check
    for --vocab-from and raw scoring, so neither accepts what the other refuses."""
    if len(keys) != listed:
        return f"holds {len(keys)} values, meta.json lists {listed!r}"
    if len(keys) and (
        np.any(np.diff(keys) <= 0) or ids.min() < 1 or ids.max() >= table_size or len(np.unique(ids)) != len(ids)
    ):
        return f"is damaged: keys must be strictly ascending and ids distinct in [1, {table_size})"
    return None


def vocabulary_meta(entries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """meta.json's ``vocabulary`` key: the OOV id and, per feature, its file or its hashing."""
    return {"oov_id": OOV_ID, "features": entries}


# -- reading and encoding ---------------------------------------------------------------------


@dataclass
class Encoded:
    ids: np.ndarray  # int64, one per raw value
    unknown: int  # values given the OOV id: unseen in train, rare (min_count) or malformed
    malformed: int  # of which not even a valid raw value of this feature (hashed features: id 0)


@dataclass
class FeatureVocabulary:
    name: str
    kind: str
    table_size: int
    hashed: bool
    sorted_keys: np.ndarray
    ids: np.ndarray

    def encode(self, values: Sequence[Union[str, bytes]]) -> Encoded:
        ok, keys = raw_to_keys(self.kind, values)
        return self.encode_keys(ok, keys)

    def encode_keys(self, ok: np.ndarray, keys: np.ndarray) -> Encoded:
        """Ids of value keys already parsed by textio (``ok``: which were valid raw values), so a
        caller that ran the preparation's own line parser (raw scoring) does not parse twice."""
        if self.hashed:
            ids = (textio.splitmix64(keys) % np.uint64(self.table_size)).astype(np.int64)
            found = ok
        elif len(self.sorted_keys):
            pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
            found = ok & (self.sorted_keys[pos] == keys)
            ids = self.ids[pos]
        else:
            ids, found = np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        ids = np.where(found, ids, OOV_ID).astype(np.int64)
        return Encoded(ids, int((~found).sum()), int((~ok).sum()))


class Vocabulary:
    """All features' vocabularies of a prepared dataset (``warnings``: for the caller to print)."""

    def __init__(self, features: Dict[str, FeatureVocabulary], source: Path, warnings: Sequence[str] = ()) -> None:
        self.features = features
        self.source = source
        self.warnings: List[str] = list(warnings)

    @classmethod
    def load(cls, data_dir: PathLike) -> "Vocabulary":
        root = Path(data_dir)
        meta = read_meta(root)
        info = meta.get("vocabulary")
        if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
            raise ValueError(
                f"{root}/meta.json has no vocabulary (prepared before vocabularies were saved, or generated "
                "data without raw values); re-run mlet-prep on the raw files"
            )
        unsealed = unsealed_warning(root, info["features"])
        features: Dict[str, FeatureVocabulary] = {}
        for name, entry in info["features"].items():
            size = int(meta["table_sizes"][name])
            features[name] = _load_feature(root, name, entry, size)
            problem = None if unsealed else digest_problem(root, name, entry, size)
            if problem:
                raise ValueError(f"{root}: {problem}")
        return cls(features, root, [unsealed] if unsealed else [])

    def encode(self, feature: str, values: Iterable[Union[str, bytes]]) -> Encoded:
        if feature not in self.features:
            raise KeyError(f"{self.source} has no vocabulary for feature {feature!r}; it has {sorted(self.features)}")
        return self.features[feature].encode(list(values))


def _load_feature(root: Path, name: str, entry: Mapping[str, Any], size: int) -> FeatureVocabulary:
    """One feature's vocabulary as meta.json lists it, its arrays checked (``arrays_problem``)."""
    if entry.get("hashed"):
        empty = np.zeros(0, np.int64)
        return FeatureVocabulary(name, entry["kind"], size, True, empty, empty)
    path = root / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path} (listed in {root}/meta.json)")
    table = pq.read_table(path, columns=["key", "id"])
    keys = table.column("key").to_numpy()
    ids = table.column("id").to_numpy()
    problem = arrays_problem(keys, ids, size, entry.get("values"))
    if problem:
        raise ValueError(f"{path} {problem} (the vocabulary of {name})")
    return FeatureVocabulary(name, entry["kind"], size, False, keys, ids)

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Sequence, Tuple, Union

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
    table = pa.table({
        "value": keys_to_raw(kind, sorted_keys),
        "key": pa.array(np.asarray(sorted_keys, np.int64)),
        "id": pa.array(np.asarray(ids, np.int64)),
    })
    # No dictionary pages: keys, ids and values are all distinct, so the writer's dictionary attempt
    # only cost time (2.3x) and bytes (1.6x larger than plain + zstd).
    pq.write_table(table, out_dir / rel, compression="zstd", use_dictionary=False)
    return rel


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
    """All features' vocabularies of a prepared dataset."""

    def __init__(self, features: Dict[str, FeatureVocabulary], source: Path) -> None:
        self.features = features
        self.source = source

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
        features: Dict[str, FeatureVocabulary] = {}
        for name, entry in info["features"].items():
            size = int(meta["table_sizes"][name])
            if entry.get("hashed"):
                empty = np.zeros(0, np.int64)
                features[name] = FeatureVocabulary(name, entry["kind"], size, True, empty, empty)
                continue
            path = root / entry["file"]
            if not path.is_file():
                raise FileNotFoundError(f"vocabulary file not found: {path} (listed in {root}/meta.json)")
            table = pq.read_table(path, columns=["key", "id"])
            keys = table.column("key").to_numpy()
            ids = table.column("id").to_numpy()
            if len(keys) and (np.any(np.diff(keys) <= 0) or ids.min() < 1 or ids.max() >= size):
                raise ValueError(f"{path}: keys must be strictly ascending and ids in [1, {size})")
            features[name] = FeatureVocabulary(name, entry["kind"], size, False, keys, ids)
        return cls(features, root)

    def encode(self, feature: str, values: Iterable[Union[str, bytes]]) -> Encoded:
        if feature not in self.features:
            raise KeyError(f"{self.source} has no vocabulary for feature {feature!r}; it has {sorted(self.features)}")
        return self.features[feature].encode(list(values))

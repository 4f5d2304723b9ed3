"""`--vocab-from DIR`: encode new raw files (a later day, a serving sample) with the vocabulary of an
existing prepared dataset instead of counting a new one.

Why: ids are what the model's embedding rows are indexed by. A model trained on day N can only be
fine-tuned on day N+1 if the same raw value gets the same id and the tables keep their sizes; a
fresh vocabulary would renumber everything. So the preparation skips counting, encodes with the
saved vocabulary (values it does not hold get the OOV id 0; hashed features hash into the same
table size), copies the vocabulary files into the new dataset (it stays self-contained: serving
and a further --vocab-from can read it there) and records in meta.json where they came from.

Everything is checked before any work: a vocabulary of another dataset kind, a missing or damaged
file, is one line (VocabFromError) and nothing is published.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.dataset_format import META_FILE, looks_raw, read_meta
from data_prep.spec import DatasetSpec, PathLike, PrepConfig
from data_prep.vocab_build import FeatureVocab, KeyCounter, finish_vocabs, save_vocabularies, vocab_threads
from data_prep.vocabulary import OOV_ID, VOCAB_DIR, arrays_problem, digest_problem, unsealed_warning, vocab_file

FLAG = "--vocab-from"


class VocabFromError(ValueError):
    """A --vocab-from directory that cannot be used (mlet-prep: one line, exit 2). A ValueError,
    not mlet_dist.errors.DatasetError: data_prep must not import mlet_dist (which imports torch)."""


@dataclass(frozen=True)
class SavedVocab:
    """A prepared dataset's vocabulary, loaded and checked against the dataset kind being prepared."""

    source: Path
    meta: Dict[str, Any]  # the source's meta.json
    meta_sha256: str
    vocabs: Dict[str, FeatureVocab]  # feature -> ids (exact or hashed), in the spec's feature order
    entries: Dict[str, Dict[str, Any]]  # meta.json vocabulary.features of the source

    def stage(self, out: Path) -> Tuple[Dict[str, FeatureVocab], Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
        """Copy the vocabulary files into the staging dir `out`; (vocabs, id histograms without
        counts, meta.json vocabulary entries) as the counting path returns them."""
        for name, entry in self.entries.items():
            if not entry.get("hashed"):
                (out / VOCAB_DIR).mkdir(exist_ok=True)
                shutil.copyfile(self.source / entry["file"], out / entry["file"])
        histograms: Dict[str, Dict[str, Any]] = {name: {"distinct_train_values": None} for name in self.vocabs}
        return dict(self.vocabs), histograms, {n: dict(e) for n, e in self.entries.items()}

    def hashed_features(self) -> Dict[str, str]:
        """meta.json hashed_features: the source's reasons (hashing is part of the vocabulary)."""
        theirs = self.meta.get("hashed_features") or {}
        return {n: str(theirs.get(n, "hashed in the saved vocabulary")) for n, v in self.vocabs.items() if v.hashed}

    def annotate(self, meta: Dict[str, Any]) -> None:
        """meta.json of the new dataset: the vocabulary's own min_count / hash_size (the ids were
        not counted here), how values became ids, and where the vocabulary came from."""
        meta["min_count"] = self.meta.get("min_count")
        meta["hash_size"] = self.meta.get("hash_size")
        meta["sparse_transform"] = (
            f"vocabulary of {self.source} ({self.meta.get('sparse_transform', 'saved')}); "
            f"values it does not hold -> id {OOV_ID}"
        )
        meta["vocabulary"]["from"] = {
            "dir": str(self.source),
            "dataset": self.meta.get("dataset"),
            "sources": self.meta.get("sources"),
            "meta_sha256": self.meta_sha256,
        }


def _fail(source: Path, problem: str) -> VocabFromError:
    return VocabFromError(f"{FLAG} {source}: {problem}")


def load_saved_vocab(source: PathLike, spec: DatasetSpec) -> SavedVocab:
    """The vocabulary of the prepared dataset at `source`, for encoding raw files of `spec`'s kind."""
    root = Path(source).resolve()
    if looks_raw(root):
        raise _fail(root, "a raw data file; give the dataset directory mlet-prep wrote from the earlier data")
    try:
        meta = read_meta(root)
    except (OSError, ValueError) as e:
        raise _fail(root, f"not a prepared dataset ({e})") from None
    info = meta.get("vocabulary")
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise _fail(
            root,
            "meta.json has no vocabulary (prepared before vocabularies were saved, or not from raw "
            "files); prepare the earlier data again with mlet-prep",
        )
    if info.get("oov_id") != OOV_ID:
        raise _fail(
            root, f"vocabulary OOV id is {info.get('oov_id')!r}, this version encodes unknown values as {OOV_ID}"
        )
    kinds = {c.name: c.kind for c in spec.columns if c.name in spec.sparse_features}
    theirs = {n: (e.get("kind") if isinstance(e, dict) else None) for n, e in info["features"].items()}
    if theirs != kinds:
        raise _fail(
            root,
            f"a vocabulary of {meta.get('dataset')!r} data (features {_summary(theirs)}), not of "
            f"{spec.name!r} data (features {_summary(kinds)})",
        )
    vocabs = {name: _feature(root, meta, name, info["features"][name]) for name in spec.sparse_features}
    _check_digests(root, meta, info["features"])
    digest = hashlib.sha256((root / META_FILE).read_bytes()).hexdigest()
    return SavedVocab(root, meta, digest, vocabs, {n: info["features"][n] for n in spec.sparse_features})


def _summary(kinds: Dict[str, Any]) -> str:
    names = list(kinds)
    shown = ", ".join(f"{n}:{kinds[n]}" for n in names[:4])
    return shown + (f", ... {len(names)} in all" if len(names) > 4 else "")


def _check_digests(root: Path, meta: Dict[str, Any], entries: Dict[str, Dict[str, Any]]) -> None:
    """Each feature's vocabulary against the sha256 meta.json records (swapped files, permuted ids, an
    edited hashed flag or table size); a dataset prepared before they were recorded is a warning."""
    unsealed = unsealed_warning(root, entries)
    if unsealed:
        print(f"mlet-prep: warning: {FLAG} {unsealed}", file=sys.stderr)
        return
    for name, entry in entries.items():
        problem = digest_problem(root, name, entry, meta["table_sizes"][name])
        if problem:
            raise _fail(root, problem)


def _feature(root: Path, meta: Dict[str, Any], name: str, entry: Dict[str, Any]) -> FeatureVocab:
    """One feature's ids, checked: the listed file is where --vocab-from puts it, reads, has the
    listed number of values, strictly ascending keys and distinct ids in [1, table size)."""
    size = meta["table_sizes"].get(name)
    if not isinstance(size, int) or size < 1:
        raise _fail(root, f"meta.json table_sizes has no valid size for {name}: {size!r}")
    if entry.get("hashed"):
        if size < 2:
            raise _fail(root, f"hashed feature {name} has table size {size}")
        return FeatureVocab(size=size, hashed=True)
    if entry.get("file") != vocab_file(name):
        raise _fail(root, f"vocabulary entry of {name} names file {entry.get('file')!r}, expected {vocab_file(name)!r}")
    path = root / entry["file"]
    if not path.is_file():
        raise _fail(root, f"vocabulary file not found: {path}")
    try:
        table = pq.read_table(path, columns=["key", "id"])
        keys = table.column("key").to_numpy().astype(np.int64, copy=False)
        ids = table.column("id").to_numpy().astype(np.int64, copy=False)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:  # a damaged file: any of these
        raise _fail(root, f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    problem = arrays_problem(keys, ids, size, entry.get("values"))
    if problem:
        raise _fail(root, f"{path} {problem}")
    return FeatureVocab(size=size, sorted_keys=keys, ids=ids)


def staged_vocabularies(
    spec: DatasetSpec,
    cfg: PrepConfig,
    counters: Dict[str, Optional[KeyCounter]],
    hashed: Dict[str, str],
    tmp: Path,
    saved: Optional[SavedVocab],
) -> Tuple[Dict[str, FeatureVocab], Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """What pass 2 encodes with, staged in tmp/vocab/:
    built from the train counts, or the saved vocabulary copied (adds its hashed features to
    `hashed`). Returns (vocabs, id histograms, meta.json vocabulary entries)."""
    if saved is None:
        vocabs, histograms = finish_vocabs(spec.sparse_features, counters, hashed, cfg)
        return vocabs, histograms, save_vocabularies(tmp, spec, vocabs, vocab_threads(cfg))
    hashed.update(saved.hashed_features())
    return saved.stage(tmp)

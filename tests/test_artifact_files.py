"""mlet-export's artifact (issue 31 item 8): every file with one mode (weights.safetensors was
0600, the rest 0644), and the raw value -> id vocabulary inside it (raw_vocab/), so raw requests
are encoded from the artifact alone, checked like every other listed file."""

import os
import shutil
from pathlib import Path

import pytest

from test_serving_export import exported  # noqa: F401  (the module's trained model and artifact)
from data_prep.vocabulary import Vocabulary
from mlet_dist.serving.export_artifact import RAW_VOCAB, ArtifactError, open_artifact
from mlet_dist.serving.contract import dataset_root
from mlet_dist.serving.manifest import open_serving_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_artifact_file_has_the_mode_open_gives(exported) -> None:  # noqa: F811
    root = exported.artifact.path
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}
    assert "weights.safetensors" in modes and len(modes) > 5
    assert set(modes.values()) == {0o666 & ~_umask()}, {n: oct(m) for n, m in modes.items()}


def test_the_artifact_carries_the_raw_vocabulary(exported, tmp_path: Path) -> None:  # noqa: F811
    artifact = open_artifact(exported.artifact.path)
    assert artifact.manifest["raw_vocabulary"] == RAW_VOCAB
    listed = [n for n in artifact.manifest["files"] if n.startswith(f"{RAW_VOCAB}/")]
    assert f"{RAW_VOCAB}/meta.json" in listed and f"{RAW_VOCAB}/vocab/C1.parquet" in listed
    raw_vocab = artifact.path / RAW_VOCAB
    ours, theirs = Vocabulary.load(raw_vocab), Vocabulary.load(exported.data)  # digests checked by load
    values = [
        line.split("\t")[14 + 5]
        for line in (Path(__file__).resolve().parents[1] / "data_prep/samples/criteo_sample.tsv")
        .read_text()
        .splitlines()[:500]
    ]
    assert (ours.encode("C6", values).ids == theirs.encode("C6", values).ids).all()
    # the meta.json the serving manifest recorded: `mlet-predict --raw --data ARTIFACT/raw_vocab` accepts it
    assert dataset_root(open_serving_dir(exported.serving), raw_vocab) == raw_vocab

    copy = tmp_path / "artifact"
    shutil.copytree(artifact.path, copy)
    (copy / RAW_VOCAB / "vocab" / "extra.parquet").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="raw_vocab/vocab/extra.parquet: present but not listed"):
        open_artifact(copy)
    (copy / RAW_VOCAB / "vocab" / "extra.parquet").unlink()
    (copy / RAW_VOCAB / "vocab" / "C6.parquet").write_bytes(b"damaged")
    with pytest.raises(ArtifactError, match="raw_vocab/vocab/C6.parquet"):
        open_artifact(copy)

"""The serving artifact: what ``mlet-export`` writes for deployment, from a checked serving directory.

    OUT/
      artifact.json          what is here: format, source serving dir (manifest sha256), precisions,
                             export checks (scripted vs eager), sha256 + size of every file
      contract.json          the input contract (mlet_dist.serving.contract)
      weights.safetensors    the collapsed fp32 weights, consolidated (no pickle)
      predict_<p>.pt         TorchScript predict module per table precision p (fp32 / fp16 / int8)
      raw_vocab/             the training dataset's meta.json and vocab/: raw value -> id, so raw
                             requests can be encoded from the artifact alone (a dataset-shaped dir:
                             data_prep.vocabulary.Vocabulary.load, mlet-predict --raw --data); only
                             when the dataset (with vocabularies) is found

Written in ``OUT.partial`` and renamed, artifact.json last, every file with the mode ``open()``
gives (0644 under umask 022; safetensors alone wrote 0600). ``open_artifact`` refuses a directory
whose files disagree with artifact.json (missing, resized, other sha256, or unlisted).
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from data_prep.dataset_format import META_FILE, read_meta
from data_prep.progress import StageLog
from data_prep.safe_json import read_json_file
from mlet_dist.digests import listed_file_problems
from mlet_dist.serving.contract import build_contract, dataset_root, example_request
from mlet_dist.serving.load import load_serving_model
from mlet_dist.serving.manifest import MANIFEST, ServingDirError, file_entries, sha256_file
from mlet_dist.serving.export_predict_module import TABLE_PRECISIONS, build_predict_module, script_predict_module
from mlet_dist.serving.export_weights import save_weights

ARTIFACT = "artifact.json"
CONTRACT = "contract.json"
WEIGHTS = "weights.safetensors"
RAW_VOCAB = "raw_vocab"
ARTIFACT_FORMAT = "mlet-serving-artifact"
ARTIFACT_VERSION = 1
FP32_SCRIPT_TOLERANCE = 1e-6  # scripted fp32 must reproduce the eager model
PathLike = Union[str, Path]


class ArtifactError(ServingDirError):
    """An artifact directory that must not be used; the message says what is wrong."""


def module_file(precision: str) -> str:
    return f"predict_{precision}.pt"


@dataclass
class Artifact:
    path: Path
    manifest: Dict[str, Any]

    @property
    def contract(self) -> Dict[str, Any]:
        return read_json_file(self.path / CONTRACT, "artifact contract", error=ArtifactError)

    def module_path(self, precision: str) -> Path:
        if precision not in self.manifest["precisions"]:
            raise ArtifactError(f"{self.path} has no {precision} module (exported: {self.manifest['precisions']})")
        return self.path / module_file(precision)


def export_artifact(
    serving_dir: PathLike,
    out: PathLike,
    precisions: Sequence[str] = ("fp32", "fp16", "int8"),
    data: Optional[PathLike] = None,
    overwrite: bool = False,
    log: Optional[StageLog] = None,
) -> Artifact:
    """Check ``serving_dir`` (manifest, sha256), script one predict module per precision, write the
    contract and the safetensors weights, and publish ``out`` atomically. ``log``: a line per long
    stage (mlet-export's progress); none by default."""
    out = Path(out)
    unknown = sorted(set(precisions) - set(TABLE_PRECISIONS))
    if unknown or not precisions:
        raise ValueError(f"precisions must be among {sorted(TABLE_PRECISIONS)}, got {list(precisions)}")
    if out.exists() and not overwrite:
        raise ValueError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not (out / ARTIFACT).is_file() and any(out.iterdir()):
        raise ValueError(f"refusing to overwrite {out}: it is not an artifact directory (no {ARTIFACT})")
    staging = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)  # first: a read-only or misspelt location fails before the work
        manifest = _write_staging(Path(serving_dir), staging, precisions, data, log or StageLog("", False))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)  # a failed export leaves nothing half-written
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # full or read-only disk
            raise ArtifactError(
                f"cannot write the artifact {out}: {err.strerror or err}"
                f"{f' ({err.filename})' if err.filename else ''}; nothing was published"
            ) from None
        raise
    return Artifact(out, manifest)


def _write_staging(
    serving_dir: Path, staging: Path, precisions: Sequence[str], data: Optional[PathLike], log: StageLog
) -> Dict[str, Any]:
    """Every file of the artifact in ``staging``, artifact.json last; returns its content."""
    with log.stage(f"check and load {serving_dir}"):
        model, sd = load_serving_model(serving_dir)  # refuses a directory whose checksums disagree
    root = dataset_root(sd, data)
    meta: Optional[Dict[str, Any]] = None
    vocab_files: List[str] = []
    if root is not None:
        meta = read_meta(root)
        with log.stage("copy the raw vocabulary"):
            vocab_files = _copy_raw_vocab(root, meta, staging / RAW_VOCAB)
    contract = build_contract(sd.model_config, meta)
    sample = example_request(contract, batch_size=8)
    (staging / CONTRACT).write_text(json.dumps(contract, indent=1) + "\n")
    with log.stage(f"write {WEIGHTS}"):
        save_weights(model, sd.model_config, staging / WEIGHTS)
    with torch.inference_mode():
        reference = build_predict_module(model, "fp32")(sample)["default"]
    del model  # one copy of the model at a time: each precision loads its own
    checks = {}
    for precision in precisions:
        with log.stage(f"{precision} predict module"):
            checks[precision] = _export_module(
                serving_dir, staging / module_file(precision), precision, sample, reference
            )
    names = [CONTRACT, WEIGHTS, *(module_file(p) for p in precisions), *vocab_files]
    _give_files_the_open_mode(staging)
    with log.stage("sha256 of the artifact files"):
        files = file_entries(staging, names)
    import fbgemm_gpu
    import torchrec

    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "created_unix": time.time(),
        "created_by": {
            "torch": torch.__version__,
            "torchrec": getattr(torchrec, "__version__", "unknown"),
            "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "unknown"),
        },
        "source": {
            "serving_dir": str(Path(serving_dir).resolve()),
            "manifest_sha256": sha256_file(Path(serving_dir) / MANIFEST),
        },
        "precisions": list(precisions),
        "modules": {p: module_file(p) for p in precisions},
        "interface": {"inputs": list(contract["inputs"]), "output": "default"},
        "raw_vocabulary": RAW_VOCAB if vocab_files else None,
        "checks": checks,
        "files": files,
    }
    (staging / ARTIFACT).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _export_module(
    serving_dir: Path, path: Path, precision: str, sample: Dict[str, torch.Tensor], reference: torch.Tensor
) -> Dict[str, Any]:
    """Script the ``precision`` predict module into ``path`` and check its reloaded copy against the
    eager fp32 ``reference``. Each copy of the model is let go before the next is made (the reloaded
    module holds its own weights): at Kaggle size a copy is 2.2 GB."""
    fresh, _ = load_serving_model(serving_dir, verify=False)  # quantization swaps modules in place
    script_predict_module(build_predict_module(fresh, precision), sample).save(str(path))
    del fresh
    reloaded = torch.jit.load(str(path))
    with torch.inference_mode():
        diff = float((reloaded(sample)["default"] - reference).abs().max())
    if precision == "fp32" and diff > FP32_SCRIPT_TOLERANCE:
        raise ArtifactError(f"the scripted fp32 module differs from the eager model by {diff:.2e}")
    return {"max_abs_prob_diff_vs_eager_fp32": diff, "sample_rows": int(sample["float_features"].shape[0])}


def _copy_raw_vocab(root: Path, meta: Dict[str, Any], out: Path) -> List[str]:
    """The dataset's meta.json and vocabulary files, byte for byte (their sha256 stay the ones
    meta.json and the serving manifest record), as names relative to the artifact; none for a
    dataset without raw values (synthetic, planted, foreign formats)."""
    features = (meta.get("vocabulary") or {}).get("features") or {}
    files = sorted({entry["file"] for entry in features.values() if isinstance(entry, dict) and entry.get("file")})
    if not files:
        return []
    for name in [META_FILE, *files]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, out / name)
    return [f"{RAW_VOCAB}/{name}" for name in [META_FILE, *files]]


def _give_files_the_open_mode(staging: Path) -> None:
    """Every file 0666 less the umask, as ``open()`` creates them: safetensors writes 0600, which
    a deployment copying the artifact to a serving user could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in staging.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _problems(directory: Path, manifest: Dict[str, Any]) -> List[str]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        return ["artifact.json lists no files"]
    problems = listed_file_problems(directory, files, "artifact.json")
    for path in sorted(p for p in directory.rglob("*") if not p.is_dir()):
        name = path.relative_to(directory).as_posix()
        if name != ARTIFACT and name not in files:
            problems.append(f"{name}: present but not listed in artifact.json")
    needed = [CONTRACT, WEIGHTS, *(module_file(p) for p in manifest.get("precisions", []))]
    problems += [f"artifact.json does not list {n}" for n in needed if n not in files]
    return problems


def open_artifact(directory: PathLike) -> Artifact:
    """Parse and check an artifact directory; raises ArtifactError unless every file matches."""
    directory = Path(directory)
    path = directory / ARTIFACT
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {ARTIFACT}: not an artifact directory (write one with mlet-export)")
    manifest = read_json_file(path, "artifact listing", error=ArtifactError)
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != ARTIFACT_FORMAT
        or manifest.get("format_version") != ARTIFACT_VERSION
    ):
        raise ArtifactError(f"{path}: not format {ARTIFACT_FORMAT!r} version {ARTIFACT_VERSION}")
    problems = _problems(directory, manifest)
    if problems:
        shown = "\n  ".join(problems[:10])
        raise ArtifactError(
            f"refusing artifact {directory}: its files disagree with {ARTIFACT}:\n  {shown}\n"
            "Export it again (mlet-export) or copy it again completely."
        )
    return Artifact(directory, manifest)


def load_predict_module(directory: PathLike, precision: str = "fp32") -> torch.jit.ScriptModule:
    """The checked artifact's TorchScript predict module (``torch.jit.load``; needs fbgemm_gpu's ops)."""
    import fbgemm_gpu  # noqa: F401  registers the fbgemm ops the scripted code calls

    artifact = open_artifact(directory)
    return torch.jit.load(str(artifact.module_path(precision)))

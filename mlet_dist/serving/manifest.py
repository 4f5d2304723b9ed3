"""The serving directory and its manifest.

    SERVING_DIR/
      manifest.json        what is here (JSON): format, model config, tables, checkpoint keys with
                           shapes, serving topology, source run, dataset meta, sha256 of every file
      checkpoint/          DCP checkpoint of the collapsed stock model (DLRMTrain state dict keys)
        .metadata
        __<rank>_<i>.distcp
      serving_plan.json    TorchRec sharding plan for the serving topology (plan_io layout)

A directory is accepted only if the manifest parses, every file it lists is present with the
recorded size and sha256, the checkpoint holds no file it does not list, and the model config,
the manifest's key list and the checkpoint's own metadata agree on every key, shape and dtype.
Nothing is unpickled on the way (JSON, an allow-listed metadata reader, ``weights_only`` tensors).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from data_prep.safe_json import read_json_file
from mlet_dist.digests import file_entry, listed_file_problems, sha256_file  # noqa: F401 (sha256_file: re-exported)
from mlet_dist.serving.model import ServingModelConfig, ServingTopology, expected_state_shapes
from mlet_dist.distributed.safe_dcp import UnsafeCheckpointError, safe_read_metadata

PathLike = Union[str, Path]
MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
PLAN_FILE = "serving_plan.json"
FORMAT = "mlet-serving"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "checkpoint", "files", "serving_topology", "dataset", "source")


class ServingDirError(ValueError):
    """A serving directory that must not be used; the message says what is wrong."""


def file_entries(root: Path, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """relative name -> {"sha256", "bytes"} for files under ``root``."""
    return {n: file_entry(root / n) for n in sorted(names)}


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class ServingDir:
    path: Path
    manifest: Dict[str, Any]

    @property
    def model_config(self) -> ServingModelConfig:
        return ServingModelConfig.from_dict(self.manifest["model"])

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def topology(self) -> ServingTopology:
        return ServingTopology(**self.manifest["serving_topology"])

    @property
    def checkpoint_files(self) -> List[str]:
        prefix = CHECKPOINT_DIR + "/"
        return [n[len(prefix) :] for n in self.manifest["files"] if n.startswith(prefix)]


def read_manifest(directory: PathLike) -> Dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ServingDirError(f"serving directory {directory} does not exist")
    if not path.is_file():
        partial = directory.with_name(directory.name + ".partial")
        hint = f" ({partial} exists: an export did not finish)" if partial.exists() else ""
        raise ServingDirError(
            f"{directory} has no {MANIFEST}: not a serving directory, or an incomplete one{hint}. "
            "Write one with `mlet-collapse` (or at the end of mlet-train)."
        )
    manifest = read_json_file(path, "serving manifest", error=ServingDirError)
    if not isinstance(manifest, dict):
        raise ServingDirError(f"{path} does not hold a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ServingDirError(f"{path} lacks {missing}; refusing the serving directory")
    shapes = {
        "model": dict,
        "checkpoint": dict,
        "files": dict,
        "serving_topology": dict,
        "dataset": dict,
        "source": dict,
        "tables": list,
    }
    wrong = [k for k, t in shapes.items() if k in manifest and not isinstance(manifest[k], t)]
    wrong += [f"files[{n!r}]" for n, e in manifest["files"].items() if not isinstance(e, dict)] if not wrong else []
    if wrong or not isinstance(manifest["checkpoint"].get("keys"), dict):
        raise ServingDirError(
            f"{path}: malformed entries {wrong or ['checkpoint.keys']}; refusing the serving directory"
        )
    if manifest["format"] != FORMAT or manifest["format_version"] != FORMAT_VERSION:
        raise ServingDirError(
            f"{path}: format {manifest['format']!r} version {manifest['format_version']!r}, expected "
            f"{FORMAT!r} version {FORMAT_VERSION}; re-export with this version's mlet-collapse"
        )
    return manifest


def check_files(directory: Path, manifest: Dict[str, Any], names: Optional[Sequence[str]] = None) -> List[str]:
    """Problems with the listed files (all, or ``names``): missing, size or sha256 different."""
    return listed_file_problems(directory, manifest["files"], "the manifest", names)


def check_layout(directory: Path, manifest: Dict[str, Any]) -> List[str]:
    """Files present but not listed, and the required files listed."""
    problems = []
    files = manifest["files"]
    for required in (f"{CHECKPOINT_DIR}/.metadata", PLAN_FILE):
        if required not in files:
            problems.append(f"manifest does not list {required}")
    ckpt = directory / CHECKPOINT_DIR
    if ckpt.is_dir():
        for path in sorted(ckpt.iterdir()):
            name = f"{CHECKPOINT_DIR}/{path.name}"
            if name not in files:
                problems.append(f"{name}: present but not listed in the manifest")
    return problems


def check_agreement(directory: Path, manifest: Dict[str, Any]) -> List[str]:
    """Model config, manifest key list and checkpoint metadata describe the same tensors."""
    try:
        config = ServingModelConfig.from_dict(manifest["model"])
        expected = expected_state_shapes(config)
    except (TypeError, ValueError, KeyError) as err:
        return [f"manifest model config cannot be built: {err}"]
    problems = []
    listed = {k: v for k, v in manifest["checkpoint"].get("keys", {}).items()}
    if set(listed) != set(expected):
        problems.append(
            f"manifest checkpoint keys differ from the model config's: missing "
            f"{sorted(set(expected) - set(listed))[:5]}, unknown {sorted(set(listed) - set(expected))[:5]}"
        )
    for key, shape in expected.items():
        if key in listed and list(listed[key].get("shape", [])) != shape:
            problems.append(f"{key}: manifest shape {listed[key].get('shape')} but the model config gives {shape}")
    for table in config.tables:
        key = f"model.sparse_arch.embedding_bag_collection.embedding_bags.{table.name}.weight"
        if key in listed and listed[key].get("shape") != [table.num_embeddings, table.embedding_dim]:
            problems.append(
                f"table {table.name}: manifest says n={table.num_embeddings} d={table.embedding_dim}, "
                f"checkpoint key list says {listed[key].get('shape')}"
            )
    try:
        metadata = safe_read_metadata(directory / CHECKPOINT_DIR / ".metadata")
    except UnsafeCheckpointError as err:
        return problems + [str(err)]
    except Exception as err:  # unreadable or truncated pickle
        return problems + [f"checkpoint/.metadata cannot be read: {err}"]
    stored = metadata.state_dict_metadata
    for key, spec in listed.items():
        md = stored.get(key)
        if md is None:
            problems.append(f"{key}: listed in the manifest but not in the checkpoint")
            continue
        size = list(getattr(md, "size", []))
        dtype = dtype_name(getattr(getattr(md, "properties", None), "dtype", None))
        if size != list(spec.get("shape", [])) or dtype != spec.get("dtype"):
            problems.append(
                f"{key}: checkpoint has {size} {dtype}, manifest says {spec.get('shape')} {spec.get('dtype')}"
            )
    return problems


def _raise(directory: Path, problems: List[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ServingDirError(
            f"refusing serving directory {directory}: its manifest and files disagree:\n  {shown}{more}\n"
            "Re-export it (mlet-collapse) or copy it again completely."
        )


def open_serving_dir(directory: PathLike, verify: bool = True, collective: Optional[bool] = None) -> ServingDir:
    """Parse and (``verify``) check a serving directory; raises ServingDirError if it is not sound.

    ``collective`` (default: whenever a process group of several ranks is initialised): every rank
    calls this, the files are hashed by the ranks in turn (each hashes a share) and every rank
    gets the same verdict."""
    import torch.distributed as dist

    directory = Path(directory)
    manifest = read_manifest(directory)
    if not verify:
        return ServingDir(directory, manifest)
    problems = check_layout(directory, manifest)
    names = sorted(manifest["files"])
    if collective is None:
        collective = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if collective:
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = check_files(directory, manifest, names[rank::world])
        gathered: List[Optional[List[str]]] = [None] * world
        dist.all_gather_object(gathered, mine)
        problems += [p for part in gathered for p in (part or [])]
    else:
        problems += check_files(directory, manifest, names)
    _raise(directory, problems)  # hashes first: a replaced .metadata is never unpickled
    _raise(directory, check_agreement(directory, manifest))
    return ServingDir(directory, manifest)

"""Reading a DCP checkpoint without running pickle on anything it contains.

``torch.distributed.checkpoint.FileSystemReader`` reads ``.metadata`` with ``pickle.load`` and
non-tensor entries with ``torch.load(weights_only=False)``: a crafted checkpoint could run code.
``SafeFileSystemReader`` closes both doors:

- ``.metadata`` is unpickled with an allow-list of the classes DCP itself writes (its metadata
  dataclasses, ``torch.Size``, dtypes, layouts, paths); anything else is refused;
- byte (non-tensor) entries are dropped from the metadata (serving: a request for one fails as a
  missing key), or, with ``keep_bytes=True`` (training checkpoints, whose optimizer param groups
  hold floats and tuples), kept and read only through ``SafeLoadPlanner``, which unpickles them
  with ``torch.load(weights_only=True)`` instead of DCP's unrestricted ``torch.load``; tensors are
  read by DCP with ``torch.load(weights_only=True)``;
- every storage file named by the metadata must be a plain file name inside the checkpoint
  directory (and, when ``allowed_files`` is given, one of them: the manifest's list).
"""

import io
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata", "ChunkStorageMetadata", "MetadataIndex", "StorageMeta", "TensorProperties",
        "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(ValueError):
    """The checkpoint asks for something a DCP checkpoint never holds."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"checkpoint metadata refers to {module}.{name}, which a DCP checkpoint never contains; "
            "refusing to load it (the file may have been tampered with)"
        )


def safe_read_metadata(path: Union[str, Path]) -> Metadata:
    """The checkpoint's Metadata, unpickled with the allow-list."""
    with open(path, "rb") as f:
        metadata = _RestrictedUnpickler(f).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path} does not hold DCP Metadata (got {type(metadata).__name__})")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    def __init__(self, path: Union[str, Path], allowed_files: Optional[Iterable[str]] = None,
                 keep_bytes: bool = False) -> None:
        super().__init__(str(path))
        self._dir = Path(path)
        self._allowed = set(allowed_files) if allowed_files is not None else None
        self._keep_bytes = keep_bytes

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        metadata = safe_read_metadata(self._dir / name)
        kept = (TensorStorageMetadata, BytesStorageMetadata) if self._keep_bytes else TensorStorageMetadata
        tensors = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, kept)}
        others = [k for k, v in metadata.state_dict_metadata.items()
                  if not isinstance(v, (TensorStorageMetadata, BytesStorageMetadata))]
        if others:
            raise UnsafeCheckpointError(f"unknown metadata entries for {others[:3]}")
        metadata.state_dict_metadata = tensors
        storage = {}
        for index, info in (metadata.storage_data or {}).items():
            if index.fqn not in tensors:
                continue  # a dropped byte entry: never read
            rel = str(info.relative_path)
            if Path(rel).name != rel or rel in ("", ".", ".."):
                raise UnsafeCheckpointError(f"checkpoint names storage file {rel!r} outside its directory")
            if self._allowed is not None and rel not in self._allowed:
                raise UnsafeCheckpointError(f"checkpoint names storage file {rel!r}, which the manifest does not list")
            storage[index] = info
        metadata.storage_data = storage
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that byte entries are unpickled with ``weights_only=True``
    (plain containers, numbers, strings and tensors only), never with DCP's unrestricted
    ``torch.load``. Only used together with ``SafeFileSystemReader(keep_bytes=True)``.
    Mirrors ``DefaultLoadPlanner.load_bytes`` (torch 2.13); test_checkpoint_safety guards it."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"checkpoint entry {fqn!r} holds something other than plain values "
                f"({str(err).splitlines()[0][:200]}); refusing to load it"
            ) from err
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def safe_load(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """``dcp.load(state, path)`` with no unrestricted unpickling anywhere (training checkpoints).

    The metadata is read once here first: inside ``dcp.load`` a refusal reaches the caller only as
    text in DCP's own exception, and callers must be able to tell tampering from a misfit."""
    safe_read_metadata(Path(path) / ".metadata")
    dcp.load(state, storage_reader=SafeFileSystemReader(path, keep_bytes=True), planner=SafeLoadPlanner())

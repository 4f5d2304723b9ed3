"""Reading a DCP checkpoint without running pickle on anything it contains.

``torch.distributed.checkpoint.FileSystemReader`` reads ``.metadata`` with ``pickle.load`` and
non-tensor entries with ``torch.load(weights_only=False)``: a crafted checkpoint could run code.
``SafeFileSystemReader`` closes both doors:

- ``.metadata`` is unpickled with an allow-list of the classes DCP itself writes (its metadata
  dataclasses, ``torch.Size``, dtypes, layouts, paths); anything else is refused;
- byte (non-tensor) entries are dropped from the metadata, so DCP can never ``torch.load`` them
  unrestricted (a request for one fails as a missing key); tensors are read by DCP with
  ``torch.load(weights_only=True)``;
- every storage file named by the metadata must be a plain file name inside the checkpoint
  directory (and, when ``allowed_files`` is given, one of them: the manifest's list).
"""

import pickle
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch.distributed.checkpoint import FileSystemReader
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
    def __init__(self, path: Union[str, Path], allowed_files: Optional[Iterable[str]] = None) -> None:
        super().__init__(str(path))
        self._dir = Path(path)
        self._allowed = set(allowed_files) if allowed_files is not None else None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        metadata = safe_read_metadata(self._dir / name)
        tensors = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        others = [k for k, v in metadata.state_dict_metadata.items()
                  if not isinstance(v, (TensorStorageMetadata, BytesStorageMetadata))]
        if others:
            raise UnsafeCheckpointError(f"unknown metadata entries for {others[:3]}")
        metadata.state_dict_metadata = tensors
        storage = {}
        for index, info in (metadata.storage_data or {}).items():
            if index.fqn not in tensors:
                continue  # a byte entry: never read
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

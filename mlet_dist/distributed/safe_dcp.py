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

It also reads each tensor's bytes straight into the tensor being loaded (``read_data``): DCP's
reader ``torch.load``s every stored tensor whole and then copies it in, so a load briefly held a
table twice (+50% of a rank's tables at 4 tables, issue 26). Only the stored tensor's header is
unpickled (onto the meta device, ``weights_only``), which says where its bytes lie in the file.
"""

import io
import pickle
import sys
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint._traverse import set_element
from torch.futures import Future
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
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
    def __init__(
        self, path: Union[str, Path], allowed_files: Optional[Iterable[str]] = None, keep_bytes: bool = False
    ) -> None:
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
        others = [
            k
            for k, v in metadata.state_dict_metadata.items()
            if not isinstance(v, (TensorStorageMetadata, BytesStorageMetadata))
        ]
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
        storage_meta = metadata.storage_meta or StorageMeta()  # a checkpoint saved without one
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        """DCP's ``FileSystemReader.read_data`` (torch 2.13), file by file in plan order, except
        that a tensor is read into its destination (``_read_tensor``), not loaded whole first."""
        per_file: Dict[str, List[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for relative_path, items in per_file.items():
            with self.fs.create_stream(self.fs.concat_path(self.path, relative_path), "rb") as file:
                for item in items:
                    info = self.storage_data[item.storage_index]
                    view = self.transforms.transform_load_stream(
                        item, info.transform_descriptors or (), self._slice_file(file, info)
                    )
                    if item.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(item, io.BytesIO(view.read(-1)))
                    else:  # a transformed (e.g. compressed) stream has no bytes to read in place; the
                        # local FileSystem's files are BufferedReaders (readinto)
                        raw = (
                            (file, info)
                            if isinstance(file, io.BufferedIOBase) and not info.transform_descriptors
                            else None
                        )
                        _read_tensor(item, planner, view, raw)
        done: Future = Future()
        done.set_result(None)
        return done


def _read_tensor(
    item: ReadItem, planner: LoadPlanner, view: IO[bytes], raw: Optional[Tuple[io.BufferedIOBase, _StorageInfo]]
) -> None:
    """Fill the destination of one stored tensor (or of the part of it this rank loads). ``raw``:
    (the open file, the item's _StorageInfo) when its bytes lie in the file as stored."""
    target = planner.resolve_tensor(item).detach()
    if raw is None or not _read_in_place(item, view, raw, target):
        _load_and_copy(item, view, target)
    planner.commit_tensor(item, target)


def _read_in_place(
    item: ReadItem, view: IO[bytes], raw: Tuple[io.BufferedIOBase, _StorageInfo], target: torch.Tensor
) -> bool:
    """Read the item's bytes from the file straight into ``target``; False, having read nothing,
    when they are not ``target``'s bytes as they lie (then DCP's way must convert them)."""
    stored = _stored_header(view)
    if stored is None:
        return False
    region = narrow_tensor_by_index(stored, item.storage_offsets, item.lengths)
    if not _readable_in_place(region, target):
        return False
    file, info = raw
    _check_inside(stored, info.length, item)
    file.seek(info.offset + _byte_offset(region))
    _read_exactly(file, target, item)
    return True


def _load_and_copy(item: ReadItem, view: IO[bytes], target: torch.Tensor) -> None:
    """DCP's way, for another dtype, a strided part, another byte order or a transformed stream:
    load the stored tensor whole, then copy this rank's part into ``target``."""
    view.seek(0)
    tensor = narrow_tensor_by_index(
        torch.load(view, map_location="cpu", weights_only=True), item.storage_offsets, item.lengths
    )
    if tensor.size() != target.size():
        raise ValueError(
            f"{item.storage_index.fqn}: stored {tuple(tensor.size())}, loading into {tuple(target.size())}"
        )
    target.copy_(tensor)


def _stored_header(view: IO[bytes]) -> Optional[torch.Tensor]:
    """The stored tensor on the meta device: its dtype, shape, strides and where its bytes start
    (``untyped_storage()._checkpoint_offset``, from the start of ``view``), no data read. None when
    its byte order is not this machine's (then it must go through torch.load, which swaps)."""
    view.seek(0)
    with torch.serialization._open_zipfile_reader(view) as archive:
        order = archive.get_record("byteorder").decode() if archive.has_record("byteorder") else "little"
    if order != sys.byteorder:
        return None
    view.seek(0)
    header = torch.load(view, map_location="meta", weights_only=True)
    return header if isinstance(header, torch.Tensor) else None


def _readable_in_place(region: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the stored region's bytes, read as they lie, are the target's bytes."""
    return (
        region.dtype == target.dtype
        and region.size() == target.size()
        and target.device.type == "cpu"
        and region.is_contiguous()
        and target.is_contiguous()
    )


def _checkpoint_offset(stored: torch.Tensor) -> int:
    """Where a header's storage bytes start in its stored item: torch.load(map_location="meta")
    records it on every storage it makes (torch/serialization.py, load_tensor)."""
    offset = stored.untyped_storage()._checkpoint_offset
    assert offset is not None, "torch.load onto the meta device recorded no storage offset"
    return offset


def _byte_offset(region: torch.Tensor) -> int:
    """Where ``region``'s first byte lies from the start of its stored item."""
    return _checkpoint_offset(region) + int(region.storage_offset()) * region.element_size()


def _check_inside(stored: torch.Tensor, item_length: int, item: ReadItem) -> None:
    """The stored tensor's storage must lie inside its item's bytes (a crafted size would read its neighbours)."""
    if _checkpoint_offset(stored) + stored.untyped_storage().nbytes() > item_length:
        raise UnsafeCheckpointError(f"checkpoint entry {item.storage_index.fqn!r} claims bytes past its end")


def _read_exactly(file: io.BufferedIOBase, target: torch.Tensor, item: ReadItem) -> None:
    """Read ``target.nbytes`` bytes from ``file`` into ``target``'s memory."""
    if target.numel() == 0:
        return
    buffer = target.reshape(-1).view(torch.uint8).numpy().data
    filled = 0
    while filled < len(buffer):
        got = file.readinto(buffer[filled:])
        if not got:
            raise ValueError(f"checkpoint entry {item.storage_index.fqn!r} ends after {filled} of {len(buffer)} bytes")
        filled += got


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

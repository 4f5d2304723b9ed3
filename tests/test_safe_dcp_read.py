"""SafeFileSystemReader reads each stored tensor's bytes straight into the tensor being loaded
(issue 26: DCP's reader torch.load'ed every tensor whole, then copied it in, so a load held a
table twice). The values must be bit-identical to what was saved, on the in-place path and on
the fallbacks (another dtype, a strided destination, part of a stored tensor)."""

from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

from mlet_dist.distributed import safe_dcp
from mlet_dist.distributed.safe_dcp import SafeFileSystemReader, safe_load


def _table() -> torch.Tensor:
    """A table as fbgemm holds it on CPU: a view into a larger flat buffer, with bit patterns
    that a value comparison would not see (NaN payload, -0.0)."""
    flat = torch.randn(5 * 1000 * 16, generator=torch.Generator().manual_seed(0))
    table = flat[1000 * 16 : 3 * 1000 * 16].view(2000, 16)
    table[0, 0], table[0, 1] = float("nan"), -0.0
    return table


def _saved(tmp_path: Path) -> Dict[str, object]:
    state = {
        "table": _table(),
        "half": torch.randn(7, 3).to(torch.bfloat16),
        "count": torch.tensor(42),
        "ids": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "group": {"lr": 0.1, "name": "adam"},
    }
    dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"))
    return state


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _count_whole_loads(monkeypatch: pytest.MonkeyPatch) -> List[object]:
    """Record every torch.load that materialises a stored tensor (a header onto the meta device is not one)."""
    calls: List[object] = []
    real = torch.load

    def counting(*args, **kwargs):
        loaded = real(*args, **kwargs)
        if isinstance(loaded, torch.Tensor) and loaded.device.type != "meta":
            calls.append(tuple(loaded.shape))
        return loaded

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_load_is_bit_identical_and_reads_tensors_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _saved(tmp_path)
    dest = {
        k: torch.full_like(v, 7) if isinstance(v, torch.Tensor) else {"lr": 0.0, "name": ""} for k, v in saved.items()
    }
    pointers = {k: v.data_ptr() for k, v in dest.items() if isinstance(v, torch.Tensor)}
    whole_loads = _count_whole_loads(monkeypatch)
    safe_load(dest, tmp_path / "ckpt")
    for name, value in saved.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(_bits(dest[name]), _bits(value)), name
            assert dest[name].data_ptr() == pointers[name], name  # filled, not replaced
    assert dest["group"] == {"lr": 0.1, "name": "adam"}
    assert whole_loads == [], whole_loads  # every tensor read into its place, none loaded whole


def test_fallbacks_convert_and_fill_strided_destinations(tmp_path: Path) -> None:
    saved = _saved(tmp_path)
    as_double = torch.zeros(2000, 16, dtype=torch.float64)  # another dtype: loaded, then converted
    strided = torch.zeros(3, 7, dtype=torch.bfloat16).t()  # not contiguous: loaded, then copied
    dest = {"table": as_double, "half": strided}
    dcp.load(dest, storage_reader=SafeFileSystemReader(tmp_path / "ckpt"))
    torch.testing.assert_close(as_double, saved["table"].double(), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(_bits(strided), _bits(saved["half"]))


class _OnePart:
    """A load planner stub: one read item's destination, as DCP hands a rank its part of a
    stored shard when the row split changed (resharding)."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target, self.committed = target, 0

    def resolve_tensor(self, item: ReadItem) -> torch.Tensor:
        return self.target

    def commit_tensor(self, item: ReadItem, tensor: torch.Tensor) -> None:
        self.committed += 1


@pytest.mark.parametrize("offsets, lengths", [((300, 0), (500, 16)), ((0, 4), (2000, 8))])
def test_part_of_a_stored_tensor(tmp_path: Path, offsets: tuple, lengths: tuple) -> None:
    """Rows of a stored table are read in place from their byte offset; a column part is strided
    in the file and takes the load-then-copy path. Both equal the saved slice bit for bit."""
    saved = _saved(tmp_path)["table"]
    reader = SafeFileSystemReader(tmp_path / "ckpt")
    metadata = reader.read_metadata()
    reader.set_up_storage_reader(metadata, True)
    index = next(i for i in metadata.storage_data if i.fqn == "table")
    item = ReadItem(LoadItemType.TENSOR, MetadataIndex("table", (0, 0)), (0, 0), index, offsets, lengths)
    part = _OnePart(torch.full(lengths, 7.0))
    reader.read_data(LoadPlan([item]), part).wait()
    expected = saved[offsets[0] : offsets[0] + lengths[0], offsets[1] : offsets[1] + lengths[1]]
    assert torch.equal(_bits(part.target), _bits(expected)) and part.committed == 1


def test_a_stored_size_past_its_item_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored header says where its bytes lie; one that claims more bytes than its item holds
    (a crafted header, simulated here) is refused rather than read from the neighbouring entry."""
    saved = _saved(tmp_path)
    real = safe_dcp._stored_header

    def oversized(view):
        header = real(view)
        claim = torch.empty(2 * header.shape[0], header.shape[1], device="meta")
        claim.untyped_storage()._checkpoint_offset = header.untyped_storage()._checkpoint_offset
        return claim

    monkeypatch.setattr(safe_dcp, "_stored_header", oversized)
    with pytest.raises(BaseException, match="claims bytes past its end"):  # inside DCP's CheckpointException
        dcp.load({"table": torch.zeros_like(saved["table"])}, storage_reader=SafeFileSystemReader(tmp_path / "ckpt"))

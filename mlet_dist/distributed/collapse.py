"""The collapse, in one place: after training, T (n×k) · W (k×d) is a plain n×d table, so serving
pays nothing for MLET.

One kernel (``_product_into``: row chunk by row chunk into the output, never a second k-wide copy)
serves two entries:

- ``collapse_table`` / ``collapse`` / ``collapse_model``: an unsharded MLET collection (or a model
  holding one) into a stock ``EmbeddingBagCollection`` of width d.
- ``collapse_state_dict``: the owner-side collapse of a (DMP-sharded or plain) model's state dict:
  every rank multiplies the k-wide table shards it holds by the matching rows of W and keeps the
  d-wide result, so no rank ever holds more of a k-wide table than it trained with.

In a state dict an MLET collection at ``<p>`` shows ``<p>wide.embedding_bags.<t>.weight`` (n×k) and
``<p>projections.<t>.weight`` (k×d). The result replaces the pair with
``<p>embedding_bags.<t>.weight`` (n×d), the key that ``collapse_model`` gives the stock
EmbeddingBagCollection, so the state dict is that of the collapsed stock model. Every other entry
(dense layers, already d-wide tables of a baseline model) passes through untouched.

Per table, the shards of T are grouped by row block (shard_offsets[0], shard_sizes[0]):

- one rank holds all k columns of the block (table-wise, row-wise, table-row-wise, or several
  column shards on one rank): it computes block·W in row chunks, no communication;
- the columns are spread over several ranks (column-wise): each owner computes its partial
  product T[:, cols]·W[cols, :] per row chunk and the partials are summed with ``dist.reduce``
  over the group of those owners; the block's d-wide rows are split evenly between the owners,
  so each ends up with 1/m of them;
- a replicated table (data-parallel: a plain tensor on every rank) is split by rows across all
  ranks, each collapsing its own slice.

The d-wide tables come back as ShardedTensors with the layout above (plain tensors when no
process group is initialised), ready for ``torch.distributed.checkpoint`` to save; DCP reshards
them into any other plan on load. Extra memory per rank: its d-wide output rows plus one
``chunk_rows × d`` buffer (and a ``chunk_rows × k`` fp32 copy when T is not fp32).

This layer (distributed/) is the lowest that may hold both halves; writing the result as a serving
directory is serving/serving_dir_writer.py, and mlet-collapse (a run directory) serving/collapse_cli.py.
"""

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    TensorProperties,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

DEFAULT_CHUNK_ROWS = 65536
StateValue = Union[torch.Tensor, ShardedTensor]
WIDE_INFIX = "wide.embedding_bags."
PROJ_INFIX = "projections."
SUFFIX = ".weight"


def _product_into(out: torch.Tensor, parts: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """out = Σ table_i @ proj_i over ``parts`` (one row chunk; several parts when a rank holds
    several column shards of it), in out's dtype. Both collapse entries go through here."""
    for i, (table, proj) in enumerate(parts):
        if table.dtype != out.dtype:
            table = table.to(out.dtype)
        if proj.dtype != out.dtype:
            proj = proj.to(out.dtype)
        if i:
            out.addmm_(table, proj)
        else:
            torch.matmul(table, proj, out=out)


@torch.no_grad()
def collapse_table(
    table: torch.Tensor,
    projection: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """T·W computed chunk by chunk into ``out``: the only extra memory is the n×d result
    (or nothing when ``out`` is given), never a second k-wide copy."""
    if table.dim() != 2 or projection.dim() != 2 or table.shape[1] != projection.shape[0]:
        raise ValueError(f"cannot collapse table {tuple(table.shape)} with projection {tuple(projection.shape)}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    n, d = table.shape[0], projection.shape[1]
    if out is None:
        out = torch.empty(n, d, dtype=projection.dtype, device=projection.device)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        _product_into(out[start:stop], [(table[start:stop], projection)])
    return out


@torch.no_grad()
def collapse(mlet: MLETEmbeddingBagCollection, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> EmbeddingBagCollection:
    """A stock torchrec EmbeddingBagCollection whose tables equal T·W."""
    device = mlet.device
    ebc = EmbeddingBagCollection(tables=mlet.embedding_bag_configs(), is_weighted=mlet.is_weighted(), device=device)
    for cfg in mlet.mlet_configs():
        wide = mlet.wide.embedding_bags[cfg.name].weight
        collapse_table(
            wide,
            mlet.projection_weight(cfg.name),
            chunk_rows=chunk_rows,
            out=ebc.embedding_bags[cfg.name].weight.data,
        )
    return ebc


def collapse_model(model: nn.Module, chunk_rows: int = DEFAULT_CHUNK_ROWS, inplace: bool = False) -> nn.Module:
    """Replace every MLETEmbeddingBagCollection in an (unsharded) model with its collapsed EBC."""
    if isinstance(model, MLETEmbeddingBagCollection):
        return collapse(model, chunk_rows)
    target = model if inplace else copy.deepcopy(model)
    replacements = [
        (name, module) for name, module in target.named_modules() if isinstance(module, MLETEmbeddingBagCollection)
    ]
    if not replacements:
        raise ValueError("model holds no MLETEmbeddingBagCollection to collapse")
    for name, module in replacements:
        parent_name, _, attr = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, attr, collapse(module, chunk_rows))
    return target


# --- owner-side: a state dict, on the ranks that hold the shards ------------------------------


@dataclass
class CollapseStats:
    """What this rank did, and (``total_*``) the sum over ranks."""

    tables: List[str] = field(default_factory=list)
    local_k_bytes: int = 0  # bytes of k-wide table shards read on this rank
    local_d_bytes: int = 0  # bytes of d-wide rows this rank holds afterwards
    seconds: float = 0.0  # wall time of the collapse on this rank
    total_k_bytes: int = 0
    total_d_bytes: int = 0
    max_seconds: float = 0.0

    @property
    def gb_per_s(self) -> float:
        """k-wide bytes read per second, all ranks together (slowest rank's time)."""
        return self.total_k_bytes / max(self.max_seconds, 1e-12) / 1e9


@dataclass(frozen=True)
class _Piece:
    """Columns [col, col + cols) of rows [row, row + rows) of T, held by ``rank``."""

    row: int
    rows: int
    col: int
    cols: int
    rank: int


@dataclass(frozen=True)
class _OutBlock:
    """Rows [row, row + rows) of the d-wide result, computed from ``pieces``, kept on ``dst``."""

    row: int
    rows: int
    dst: int
    pieces: Tuple[_Piece, ...]


def mlet_table_keys(state: Mapping[str, object]) -> List[Tuple[str, str, str, str]]:
    """(wide key, projection key, collapsed key, table) for every MLET table in a state dict."""
    found = []
    for key in state:
        if WIDE_INFIX not in key or not key.endswith(SUFFIX):
            continue
        prefix, _, rest = key.rpartition(WIDE_INFIX)
        table = rest[: -len(SUFFIX)]
        proj = f"{prefix}{PROJ_INFIX}{table}{SUFFIX}"
        if proj not in state:
            raise KeyError(f"{key}: MLET table without its projection {proj}")
        found.append((key, proj, f"{prefix}embedding_bags.{table}{SUFFIX}", table))
    return sorted(found)


def _dist_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _even_split(start: int, length: int, parts: int) -> List[Tuple[int, int]]:
    """``parts`` consecutive (start, length) ranges covering [start, start + length)."""
    base, extra = divmod(length, parts)
    out, pos = [], start
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((pos, size))
        pos += size
    return out


def _plan_blocks(wide: StateValue, key: str, world: int) -> List[_OutBlock]:
    """Where each block of d-wide rows is computed from and kept; identical on every rank."""
    n, k = int(wide.size(0)), int(wide.size(1))
    if not isinstance(wide, ShardedTensor):  # replicated: split rows over all ranks
        return [
            _OutBlock(row, rows, r, (_Piece(row, rows, 0, k, r),))
            for r, (row, rows) in enumerate(_even_split(0, n, world))
            if rows > 0
        ]
    by_rows: Dict[Tuple[int, int], List[_Piece]] = {}
    for m in wide.metadata().shards_metadata:
        row, col = int(m.shard_offsets[0]), int(m.shard_offsets[1])
        rows, cols = int(m.shard_sizes[0]), int(m.shard_sizes[1])
        rank = m.placement.rank() if m.placement is not None else None
        assert rank is not None, f"shard at {m.shard_offsets} has no rank placement"
        by_rows.setdefault((row, rows), []).append(_Piece(row, rows, col, cols, rank))
    blocks: List[_OutBlock] = []
    covered = 0
    for (row, rows), pieces in sorted(by_rows.items()):
        if rows == 0:  # row-wise over more ranks than rows: the extra ranks hold empty shards
            continue
        pieces.sort(key=lambda p: (p.col, p.rank))
        if sum(p.cols for p in pieces) != k or row != covered:
            raise ValueError(
                f"{key}: shards of rows [{row}, {row + rows}) do not tile the {n}x{k} table "
                "(overlapping or missing column/row ranges); cannot collapse"
            )
        covered = row + rows
        owners = sorted({p.rank for p in pieces})
        if len(owners) == 1:
            blocks.append(_OutBlock(row, rows, owners[0], tuple(pieces)))
        else:
            for dst, (sub, sub_rows) in zip(owners, _even_split(row, rows, len(owners))):
                if sub_rows > 0:
                    blocks.append(_OutBlock(sub, sub_rows, dst, tuple(pieces)))
    if covered != n:
        raise ValueError(f"{key}: shards cover rows [0, {covered}) of {n}; cannot collapse")
    return blocks


def _local_table_rows(wide: StateValue, piece: _Piece) -> torch.Tensor:
    """This rank's slice of T for ``piece`` (a view, no copy)."""
    if not isinstance(wide, ShardedTensor):
        return wide[piece.row : piece.row + piece.rows, piece.col : piece.col + piece.cols]
    for shard in wide.local_shards():
        off, size = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        if (int(off[0]), int(size[0]), int(off[1]), int(size[1])) == (piece.row, piece.rows, piece.col, piece.cols):
            return shard.tensor
    raise KeyError(f"no local shard at rows {piece.row}+{piece.rows}, cols {piece.col}+{piece.cols}")


def _local_projection_rows(proj: StateValue, col: int, cols: int, key: str) -> torch.Tensor:
    """Rows [col, col + cols) of W as held here (a ShardedTensor of row slices, or all of W)."""
    if not isinstance(proj, ShardedTensor):
        return proj[col : col + cols]
    for shard in proj.local_shards():
        off, size = int(shard.metadata.shard_offsets[0]), int(shard.metadata.shard_sizes[0])
        if off <= col and col + cols <= off + size:
            return shard.tensor[col - off : col - off + cols]
    raise KeyError(f"{key}: rows [{col}, {col + cols}) of the projection are not held on this rank")


class _Groups:
    """Process groups of column-shard owners, created in the same order on every rank."""

    def __init__(self, owner_sets: Sequence[Tuple[int, ...]], world: int) -> None:
        self._groups: Dict[Tuple[int, ...], Optional[dist.ProcessGroup]] = {}
        for ranks in sorted(set(owner_sets)):
            self._groups[ranks] = None if len(ranks) == world else dist.new_group(list(ranks))

    def __getitem__(self, ranks: Tuple[int, ...]) -> Optional[dist.ProcessGroup]:
        return self._groups[ranks]

    def destroy(self) -> None:
        for group in self._groups.values():
            if group is not None and group != dist.GroupMember.NON_GROUP_MEMBER:
                dist.destroy_process_group(group)
        self._groups.clear()


@torch.no_grad()
def _collapse_block(
    block: _OutBlock,
    wide: StateValue,
    proj: StateValue,
    key: str,
    rank: int,
    d: int,
    device: torch.device,
    dtype: torch.dtype,
    chunk_rows: int,
    groups: _Groups,
    out: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], int]:
    """(this rank's d-wide rows of ``block`` or None, k-wide bytes read here); the rows go into
    ``out`` when given (block.rows × d), else into a new tensor."""
    mine = [p for p in block.pieces if p.rank == rank]
    owners = tuple(sorted({p.rank for p in block.pieces}))
    if not mine:
        return None, 0
    if block.dst != rank:
        out = None
    elif out is None:
        out = torch.empty(block.rows, d, dtype=dtype, device=device)
    scratch = None if len(owners) == 1 else torch.empty(min(chunk_rows, block.rows), d, dtype=dtype, device=device)
    read = 0
    tables = [(_local_table_rows(wide, p), p) for p in mine]
    projs = [_local_projection_rows(proj, p.col, p.cols, key) for p in mine]
    for start in range(0, block.rows, chunk_rows):
        stop = min(start + chunk_rows, block.rows)
        if out is not None:
            target = out[start:stop]
        else:
            assert scratch is not None
            target = scratch[: stop - start]
        parts = [
            (table[block.row - piece.row + start : block.row - piece.row + stop], w)  # rows of the local shard
            for (table, piece), w in zip(tables, projs)
        ]
        read += sum(rows.numel() * rows.element_size() for rows, _ in parts)
        _product_into(target, parts)
        if len(owners) > 1:
            dist.reduce(target, dst=block.dst, group=groups[owners])
    return out, read


def _placements(device: torch.device, world: int) -> List[str]:
    """Placement string of every rank ("rank:r/<device>"), gathered once."""
    if world == 1:
        return [f"rank:0/{device}"]
    devices: List[Optional[str]] = [None] * world
    dist.all_gather_object(devices, str(device))
    return [f"rank:{r}/{devices[r]}" for r in range(world)]


def _as_sharded(
    blocks: List[_OutBlock],
    local: Dict[int, torch.Tensor],
    n: int,
    d: int,
    dtype: torch.dtype,
    placements: List[str],
) -> ShardedTensor:
    metas = [
        ShardMetadata(shard_offsets=[b.row, 0], shard_sizes=[b.rows, d], placement=placements[b.dst]) for b in blocks
    ]
    shards = [Shard(tensor=local[b.row], metadata=m) for b, m in zip(blocks, metas) if b.row in local]
    metadata = ShardedTensorMetadata(
        shards_metadata=metas, size=torch.Size([n, d]), tensor_properties=TensorProperties(dtype=dtype)
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata(shards, metadata)


def _device_of(state: Mapping[str, StateValue]) -> torch.device:
    for value in state.values():
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                return shard.tensor.device
        elif isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


@torch.no_grad()
def collapse_state_dict(
    state: Mapping[str, StateValue],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    dtype: torch.dtype = torch.float32,
    on_table: Optional[Callable[[int, int], None]] = None,
) -> Tuple[Dict[str, StateValue], CollapseStats]:
    """The collapsed model's state dict (d-wide tables as ShardedTensors) and what it cost.

    Collective when a process group is initialised: every rank calls it with its own
    ``model.state_dict()`` of the same model. Row chunks of ``chunk_rows`` bound the temporary
    memory; the order of collectives is the same on every rank (tables sorted by key).
    ``on_table(done, total)`` is called after each table (progress of a long collapse).
    """
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    rank, world = _dist_world()
    pairs = mlet_table_keys(state)
    device = _device_of(state)
    stats = CollapseStats(tables=[t for *_, t in pairs])
    plans = {wide_key: _plan_blocks(state[wide_key], wide_key, world) for wide_key, *_ in pairs}
    owner_sets = [
        tuple(sorted({p.rank for p in b.pieces}))
        for blocks in plans.values()
        for b in blocks
        if len({p.rank for p in b.pieces}) > 1
    ]
    groups = _Groups(owner_sets, world) if world > 1 else _Groups([], 1)
    placements = _placements(device, world) if world > 1 else [f"rank:0/{device}"]

    started = time.perf_counter()
    collapsed: Dict[str, StateValue] = {}
    replaced: Set[str] = set()
    for done, (wide_key, proj_key, out_key, _table) in enumerate(pairs, 1):
        wide, proj = state[wide_key], state[proj_key]
        n, k = int(wide.size(0)), int(wide.size(1))
        if int(proj.size(0)) != k:
            raise ValueError(f"{proj_key}: projection {tuple(proj.size())} does not match table {n}x{k}")
        d = int(proj.size(1))
        full = torch.empty(n, d, dtype=dtype, device=device) if world == 1 else None  # one process: one tensor
        local: Dict[int, torch.Tensor] = {}
        for block in plans[wide_key]:
            target = full[block.row : block.row + block.rows] if full is not None else None
            out, read = _collapse_block(block, wide, proj, proj_key, rank, d, device, dtype, chunk_rows, groups, target)
            stats.local_k_bytes += read
            if out is not None:
                local[block.row] = out
                stats.local_d_bytes += out.numel() * out.element_size()
        if full is not None:
            collapsed[out_key] = full
        else:
            collapsed[out_key] = _as_sharded(plans[wide_key], local, n, d, dtype, placements)
        replaced.update((wide_key, proj_key))
        if on_table is not None:
            on_table(done, len(pairs))
    stats.seconds = time.perf_counter() - started
    groups.destroy()

    out_key_of = {wide_key: out_key for wide_key, _, out_key, _ in pairs}
    result: Dict[str, StateValue] = {}
    for key, value in state.items():  # keep the original order; a collapsed table takes its wide key's place
        if key in out_key_of:
            result[out_key_of[key]] = collapsed[out_key_of[key]]
        elif key not in replaced:
            result[key] = value
    if world > 1:
        totals = torch.tensor([stats.local_k_bytes, stats.local_d_bytes], dtype=torch.float64, device=device)
        seconds = torch.tensor([stats.seconds], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        stats.total_k_bytes, stats.total_d_bytes = int(totals[0]), int(totals[1])
        stats.max_seconds = float(seconds[0])
    else:
        stats.total_k_bytes, stats.total_d_bytes, stats.max_seconds = (
            stats.local_k_bytes,
            stats.local_d_bytes,
            stats.seconds,
        )
    return result, stats

"""Checkpoints without fbgemm's CPU loop states load into a job that keeps them.

With ``--cpu-table-update loop`` (training/optim.py) every fused rowwise
Adagrad table keeps two per-row states beside momentum1, ``prev_iter`` and ``row_counter``, that
its update never reads. A checkpoint written by the JIT path, on CUDA or by a version before the
loop lacks them, and DCP refuses a load that asks for keys the checkpoint does not have. Those
keys are left out of the load request instead: the job's own zeros stand, which is exact because
the update does not depend on them. The opposite way (a loop checkpoint into a JIT or CUDA job)
needs nothing: DCP loads only the keys a job asks for.
"""

from typing import Any, Dict, List, Tuple

from torch.distributed._shard.sharded_tensor import ShardedTensor

from mlet_dist.training.optim import LOOP_ONLY_STATES

Nested = Dict[str, Any]


def is_loop_state(name: str) -> bool:
    """``t_C3.prev_iter`` -> True: a table's loop-only optimizer state (TorchRec names them table.state)."""
    return name.rsplit(".", 1)[-1] in LOOP_ONLY_STATES


def without_absent_loop_states(state: Nested, saved_keys: "set[str]") -> Tuple[Nested, List[str]]:
    """(the request to load: ``state`` less the loop states ``saved_keys`` lacks, their DCP keys).

    ``state`` is ``{"model": ..., "optim": optimizer.state_dict()}``; DCP names an optimizer state
    ``optim.state.<parameter>.<table>.<state>``. The left-out tensors are zeroed, as a fresh job's are."""
    kept_states: Nested = {}
    dropped: List[str] = []
    for param, states in state["optim"]["state"].items():
        kept_states[param] = {}
        for name, value in states.items():
            key = f"optim.state.{param}.{name}"
            if is_loop_state(name) and key not in saved_keys:
                dropped.append(key)
                _zero(value)
            else:
                kept_states[param][name] = value
    if not dropped:
        return state, []
    return {**state, "optim": {**state["optim"], "state": kept_states}}, dropped


def _zero(value: Any) -> None:
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            shard.tensor.zero_()
    elif hasattr(value, "zero_"):
        value.zero_()


def loaded_optimizer_state(state: Nested, request: Nested) -> Nested:
    """The optimizer state dict to load after DCP filled ``request``: its values (DCP may replace
    non-tensor entries in the request's dicts) plus the left-out loop states of ``state``."""
    full = state["optim"]["state"]
    loaded = request["optim"]["state"]
    return {**request["optim"], "state": {param: {**full[param], **loaded[param]} for param in full}}

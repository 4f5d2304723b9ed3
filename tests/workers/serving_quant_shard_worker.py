"""2 gloo ranks: TorchRec's quantized sharding (shard_quant_model's plan, _shard_modules) over a real
process group. Writes, from rank 0, each rank's max |p_sharded - p_unsharded| and the bytes of
table rows each process holds (tests/test_serving_export_sharded.py reads it)."""

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torchrec.distributed.global_settings import set_propogate_device
from torchrec.distributed.shard import _shard_modules
from torchrec.distributed.types import ShardingEnv
from torchrec.inference.modules import DEFAULT_SHARDERS, assign_weights_to_tbe, get_table_to_weights_from_tbe, shard_quant_model

from mlet_dist.serving.contract import build_contract, example_request
from mlet_dist.serving.model import ServingModelConfig, TableSpec, build_serving_model
from mlet_dist.serving.predict_module import build_predict_module
from mlet_dist.serving.quantize import quantized_table_bytes

SIZES = {"a": 5000, "b": 3000, "c": 400, "d": 7}


def fresh_module() -> torch.nn.Module:
    config = ServingModelConfig("dlrm", 3, [8, 4], [8, 1], [TableSpec(f"t_{f}", n, 4, [f]) for f, n in SIZES.items()])
    torch.manual_seed(0)
    return build_predict_module(build_serving_model(config), "int8"), config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    set_propogate_device(True)
    unsharded, config = fresh_module()
    request = example_request(build_contract(config, None), batch_size=32, seed=1)
    with torch.inference_mode():
        expected = unsharded(request)["default"]
    total = quantized_table_bytes(unsharded.predict_module.sparse_arch.embedding_bag_collection)
    weights = get_table_to_weights_from_tbe(unsharded)
    _, plan = shard_quant_model(fresh_module()[0], world_size=world, compute_device="cpu", sharding_device="meta")
    module, _ = fresh_module()
    sharded = _shard_modules(module=module, device=torch.device("cpu"), plan=plan,
                             env=ShardingEnv.from_process_group(dist.group.WORLD), sharders=DEFAULT_SHARDERS)
    assign_weights_to_tbe(sharded, weights)
    with torch.inference_mode():
        diff = float((sharded(request)["default"] - expected).abs().max())
    ebc = sharded.predict_module.sparse_arch.embedding_bag_collection
    held = sum(t.weights_host.numel() * t.weights_host.element_size() for t in ebc.tbes)
    ranks = sorted({r for mp in plan.plan.values() for ps in mp.values() for r in (ps.ranks or [])})
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "diff": diff, "bytes_held": held})
    if rank == 0:
        args.out.write_text(json.dumps({"ranks": gathered, "table_bytes_total": total, "plan_ranks": ranks,
                                        "lookups_per_process": len(ebc.tbes)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Benchmark: serving throughput of a serving directory, in one run.

For each table precision (fp32 / fp16 / int8, TorchRec's quantize_inference_model) and each mode
(eager predict module vs the TorchScript one mlet-export writes), rows/s at batch 1, 64 and 4096,
plus the table memory of each precision. Requests are real rows of the training dataset's test
split when the serving manifest points at it, else random valid ids.

    python benchmarks/bench_serving.py --serving runs/demo/run/serving            # ~1 minute
    python benchmarks/bench_serving.py --serving DIR --batches 1 64 4096 --threads 1 --json out.json

rows/s = rows scored / wall seconds over repeated calls (after a warm-up call), inference mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def requests_for(serving: Path, batch: int) -> Dict[str, torch.Tensor]:
    """One request of ``batch`` rows: real test rows when the dataset is there, else random ids."""
    from mlet_dist.serving.contract import build_contract, dataset_meta, example_request, request_from_kjt
    from mlet_dist.serving.manifest import open_serving_dir
    from mlet_dist.serving.scoring import ScoringStream, rows_per_feature

    sd = open_serving_dir(serving, verify=False)
    meta = dataset_meta(sd, None)
    contract = build_contract(sd.model_config, meta)
    if meta is not None:
        stream = ScoringStream(
            sd.manifest["dataset"]["data_dir"], "test", batch, rows_per_feature(sd.manifest["tables"])
        )
        if stream.num_rows >= batch:
            b = next(iter(stream))
            return request_from_kjt(b.dense, b.sparse, [f["name"] for f in contract["sparse_features"]])
    return example_request(contract, batch_size=batch)


def rows_per_s(module: Any, request: Dict[str, torch.Tensor], min_seconds: float) -> float:
    rows = int(request["float_features"].shape[0])
    with torch.inference_mode():
        module(request)  # warm-up
        calls, started = 0, time.perf_counter()
        while True:
            module(request)
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds and calls >= 3:
                return calls * rows / elapsed


def table_bytes(module: Any) -> int:
    from mlet_dist.serving.quantize import float_table_bytes, quantized_table_bytes
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    ebc = module.predict_module.sparse_arch.embedding_bag_collection
    return float_table_bytes(ebc) if isinstance(ebc, EmbeddingBagCollection) else quantized_table_bytes(ebc)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.serving.load import load_serving_model
    from mlet_dist.serving.export_predict_module import build_predict_module, script_predict_module

    quiet_library_logs()
    torch.set_num_threads(args.threads)
    requests = {b: requests_for(args.serving, b) for b in args.batches}
    results = []
    for precision in args.precisions:
        model, _ = load_serving_model(args.serving)
        eager = build_predict_module(model, precision)
        memory = table_bytes(eager)
        scripted = script_predict_module(eager, requests[min(args.batches)])
        for mode, module in (("eager", eager), ("scripted", scripted)):
            for batch in args.batches:
                rate = rows_per_s(module, requests[batch], args.min_seconds)
                results.append(
                    {"precision": precision, "mode": mode, "batch": batch, "rows_per_s": rate, "table_bytes": memory}
                )
                print(
                    f"{precision:5s} {mode:9s} batch {batch:5d}: {rate:12,.0f} rows/s   "
                    f"tables {memory / 2**20:7.2f} MiB",
                    flush=True,
                )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serving", type=Path, default=REPO / "runs/demo/run/serving", help="serving directory")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64, 4096])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    results = run(args)
    print("\nprecision | tables MiB | " + " | ".join(f"eager b={b} | scripted b={b}" for b in args.batches))
    for precision in args.precisions:
        rows = {(r["mode"], r["batch"]): r for r in results if r["precision"] == precision}
        cells = [f"{rows[(m, b)]['rows_per_s']:,.0f}" for b in args.batches for m in ("eager", "scripted")]
        print(f"{precision} | {rows[('eager', args.batches[0])]['table_bytes'] / 2**20:.2f} | " + " | ".join(cells))
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "serving": str(args.serving), "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()

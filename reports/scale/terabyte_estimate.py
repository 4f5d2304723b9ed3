"""Criteo Terabyte estimate from the Kaggle rehearsal (issue 26 item 4): writes the "Criteo Terabyte
estimate" section of reports/scale/README.md from kaggle.json (measured here) and mlet-plan runs
for 1x8 and 8x8 H100 on MLPerf DLRM-DCNv2's tables (terabyte_mlperf_spec.json). Every figure is
marked measured, planned (mlet-plan's estimate) or assumed.

    .venv/bin/python reports/scale/terabyte_estimate.py          # after benchmarks/scale_rehearsal.py
    .venv/bin/python reports/scale/terabyte_estimate.py DIR      # reuse DIR/plan_{1x8,8x8}_{mlet,d128}.json
    .venv/bin/python reports/scale/terabyte_estimate.py --reuse-plans  # the plans' figures in terabyte_estimate.json
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
MARK = "<!-- terabyte estimate: written by terabyte_estimate.py -->"
GB = 1e9
# Assumed (not measured here): the dataset and the MLPerf setup.
TB_ROWS = 4_373_472_329  # Criteo 1TB click logs, 24 days
TB_TRAIN_ROWS = TB_ROWS * 23 // 24  # days 0-22 (day 23 for val/test), days assumed equal
GLOBAL_BATCH = 65_536  # MLPerf DLRM-DCNv2 reference global batch (assumed)
MULTI_HOT_IDS = 214  # ids per sample under MLPerf's multi-hot sizes (26 one-hot: 26)
CORES_PER_NODE = 64  # CPU cores of an 8-GPU node for mlet-prep (assumed)
SHAPES = {"1x8": 8, "8x8": 64}
MODELS = {
    "mlet": ("MLET 64->16", ["--model", "mlet", "--inner-dim", "64", "--embedding-dim", "16"]),
    "d128": ("baseline d=128 (MLPerf's width)", ["--model", "baseline", "--embedding-dim", "128"]),
}
MLPERF = (
    "MLPerf Training v3.0 DLRM-DCNv2, NVIDIA DGX H100 8x H100 (HugeCTR, result 3.0-2063): "
    "4.184 min to AUC 0.80275 (published; NVIDIA's MLPerf 3.0 training results page). A 64-GPU "
    "DLRM-DCNv2 time was not in the sources checked."
)


def plan(shape: str, flags: List[str], out: Path) -> Dict[str, Any]:
    """mlet-plan for H100s (80 GB) at this shape's per-rank share of the global batch (an existing
    ``out`` is reused: minutes per plan on a loaded 2-core box)."""
    batch = GLOBAL_BATCH // SHAPES[shape]
    cmd = [
        str(Path(sys.executable).parent / "mlet-plan"),
        "--spec",
        str(HERE / "terabyte_mlperf_spec.json"),
        "--world",
        shape,
        "--device",
        "cuda",
        "--hbm-gb",
        "80",
        "--batch-size",
        str(batch),
        *flags,
        "--out",
        str(out),
        "-q",
    ]
    if not out.exists():
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    est = json.loads(out.read_text())["estimates"]
    ranks = est["per_rank"]
    return {
        "batch": batch,
        "max_rank_gb": max(r["training_total"] for r in ranks) / GB,
        "tables_gb": sum(r["weights"] + r["optimizer"] for r in ranks) / GB,
        "perf_ms": max(r["perf_ms"] for r in ranks),
    }


def section(report: Dict[str, Any], plans: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    prep = report["prep"]
    tsv_bytes_per_row = prep["tsv"]["bytes"] / prep["tsv"]["rows"]
    prep_rate = prep["criteo_kaggle"]["mb_per_s"] * 1e6 / prep["criteo_kaggle"]["workers"]  # per core
    tb_bytes = TB_ROWS * tsv_bytes_per_row
    ck, col = report["checkpoint"], report["collapse"]
    steps = TB_TRAIN_ROWS / GLOBAL_BATCH
    lines = [
        MARK,
        "## Criteo Terabyte estimate (item 4)",
        "",
        f"Assumed: {TB_ROWS:,} rows over 24 days, {TB_TRAIN_ROWS:,} trained (days 0-22), global batch "
        f"{GLOBAL_BATCH:,} ({steps:,.0f} steps per epoch), MLPerf's 40M-capped tables "
        "(`terabyte_mlperf_spec.json`, 204.2M rows), raw text at the measured synthetic "
        f"{tsv_bytes_per_row:.0f} B/row ({tb_bytes / 1e12:.2f} TB), {CORES_PER_NODE} prep cores per node.",
        "",
        "| figure | 1x8 H100 | 8x8 H100 | kind |",
        "|---|---|---|---|",
    ]
    prep_h = {s: tb_bytes / (prep_rate * CORES_PER_NODE * n) / 3600 for s, n in (("1x8", 1), ("8x8", 8))}
    lines.append(
        f"| mlet-prep of the raw text | {prep_h['1x8']:.1f} h | {prep_h['8x8']:.2f} h | measured rate "
        f"{prep_rate / 1e6:.1f} MB/s per core here, assumed linear in cores |"
    )
    for name, by_shape in plans.items():
        a, b = by_shape["1x8"], by_shape["8x8"]
        lines.append(
            f"| {name}: largest rank's training memory | {a['max_rank_gb']:.1f} GB | {b['max_rank_gb']:.1f} GB "
            "| planned (HBM, one-hot pooling) |"
        )
        lines.append(
            f"| {name}: embedding time per step (batch {a['batch']:,} / {b['batch']:,} per rank) | "
            f"{a['perf_ms']:.1f} ms | {b['perf_ms']:.1f} ms | planned (TorchRec's estimate: lookups + "
            f"comms, no MLPs; multi-hot reads {MULTI_HOT_IDS / 26:.1f}x the ids, assumed up to that "
            "factor on lookups) |"
        )
        lines.append(
            f"| {name}: one epoch, embedding part only | {a['perf_ms'] * steps / 60e3:.1f} min | "
            f"{b['perf_ms'] * steps / 60e3:.1f} min | planned x assumed steps |"
        )
        ck_gb = a["tables_gb"]
        lines.append(
            f"| {name}: checkpoint of {ck_gb:.0f} GB (tables + optimizer) | "
            f"{ck_gb / ck['sync_save']['gb_per_s'] / 60:.1f} min | "
            f"{ck_gb / ck['sync_save']['gb_per_s'] / 8 / 60:.2f} min | measured "
            f"{ck['sync_save']['gb_per_s']} GB/s per box here, assumed per node |"
        )
    k_wide = 204_184_588 * 64 * 4 / GB
    lines.append(
        f"| MLET collapse of {k_wide:.0f} GB of k=64 tables | {k_wide / col['gb_per_s'] / 60:.1f} min | "
        f"{k_wide / col['gb_per_s'] / 8 / 60:.2f} min | measured {col['gb_per_s']} GB/s here, "
        "assumed per node |"
    )
    lines += [
        "",
        f"Beside it: {MLPERF} The planned embedding time above leaves out the MLPs, the data "
        "pipeline and multi-hot cost, so it is a lower bound on a step, not a time-to-train.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    report = json.loads((HERE / "kaggle.json").read_text())
    saved = HERE / "terabyte_estimate.json"
    if len(sys.argv) > 1 and sys.argv[1] == "--reuse-plans":  # the plans do not depend on kaggle.json
        plans = json.loads(saved.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
            plans = {
                name: {shape: plan(shape, flags, where / f"plan_{shape}_{key}.json") for shape in SHAPES}
                for key, (name, flags) in MODELS.items()
            }
    readme = HERE / "README.md"
    text = readme.read_text().split(MARK)[0].rstrip("\n")
    readme.write_text(text + "\n\n" + section(report, plans))
    (HERE / "terabyte_estimate.json").write_text(json.dumps(plans, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

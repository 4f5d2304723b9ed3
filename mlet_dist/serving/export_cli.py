"""mlet-export: a serving directory -> a deployable artifact (TorchScript predict modules, contract,
safetensors weights), in one process.

    mlet-export RUN/serving RUN/export                       # fp32, fp16 and int8 modules
    mlet-export RUN/serving RUN/export --precision int8 --data DATA

Load the result anywhere torch and fbgemm_gpu are installed (no mlet_dist, no torchrec):
``m = torch.jit.load("RUN/export/predict_int8.pt"); m(batch)["default"]``; the batch layout is in
``contract.json``.
"""

import argparse
from pathlib import Path
from typing import Optional, Sequence

from data_prep.progress import StageLog, add_stage_progress_flag, stage_lines_wanted
from mlet_dist.config_flags import DefaultsHelpFormatter
from mlet_dist.serving.manifest import ServingDirError
from mlet_dist.serving.export_predict_module import TABLE_PRECISIONS
from mlet_dist.errors import user_error_exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlet-export",
        description="Export a serving directory (mlet-collapse output) as TorchScript predict modules with "
        "dict inputs, their input contract (contract.json) and the weights as safetensors.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("serving_dir", type=Path, help="serving directory (manifest.json, checkpoint/)")
    p.add_argument("out", type=Path, help="artifact directory to write")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=sorted(TABLE_PRECISIONS),
        default=["fp32", "fp16", "int8"],
        help="table precisions to export, one predict_<p>.pt each",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the training dataset (for the contract's dense transform); default: where the manifest points",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact directory")
    add_stage_progress_flag(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.serving.export_artifact import ARTIFACT, export_artifact

    quiet_library_logs()
    args = build_parser().parse_args(argv)
    try:
        artifact = export_artifact(
            args.serving_dir,
            args.out,
            args.precision,
            data=args.data,
            overwrite=args.overwrite,
            log=StageLog("mlet-export", enabled=stage_lines_wanted(args.progress)),
        )
    except (ServingDirError, ValueError, FileNotFoundError) as err:
        user_error_exit(err)
    m = artifact.manifest
    for precision in m["precisions"]:
        diff = m["checks"][precision]["max_abs_prob_diff_vs_eager_fp32"]
        size = m["files"][m["modules"][precision]]["bytes"]
        print(
            f"{precision}: {artifact.path / m['modules'][precision]} ({size / 2**20:.2f} MiB, "
            f"max |p - p_fp32 eager| {diff:.1e})"
        )
    print(
        f"contract: {artifact.path / 'contract.json'}; weights: {artifact.path / 'weights.safetensors'}; "
        f"checksums: {artifact.path / ARTIFACT}"
    )


if __name__ == "__main__":
    main()

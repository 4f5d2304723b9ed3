"""mlet-predict: score a dataset split with a serving directory, in one process.

    mlet-predict --serving RUN/serving --data DATA --split test --out preds.parquet
    mlet-predict --serving RUN/serving --data DATA --precision int8 --compare --out preds.parquet
    mlet-predict --serving RUN/serving --raw requests.tsv --out preds.parquet   # raw Criteo/Avazu lines

Writes one probability per row (and the label when the data has one) in split order, prints
AUC / logloss when labels are present, rows/s, and the table memory. ``--precision fp16|int8``
serves the tables through TorchRec's quantized inference EBC; ``--compare`` also scores in fp32
and reports the metric change and the largest probability difference. ``--raw FILE`` scores raw
Criteo (TSV) / Avazu (CSV) lines, with or without the label column, through the training
dataset's saved vocabulary and the preparation's own parser (``raw_input.py``); the predictions
then carry each row's input ``line``, and the report counts rejected lines (each with its line
number) and values that got the out-of-vocabulary id.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from mlet_dist.config_flags import DefaultsHelpFormatter
from mlet_dist.serving.load import load_serving_model
from mlet_dist.serving.manifest import ServingDir, ServingDirError, sha256_file
from mlet_dist.serving.quantize import PRECISIONS, quantize_serving_model
from data_prep.vocabulary import Vocabulary
from mlet_dist.serving.contract import dataset_root
from mlet_dist.serving.raw_input import RawScoringStream
from mlet_dist.serving.scoring import BatchSource, ScoreResult, ScoringStream, rows_per_feature, score
from mlet_dist.errors import user_error_exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlet-predict",
        description="Score a split of a prepared dataset with a serving directory (mlet-collapse output).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--serving", type=Path, required=True, help="serving directory")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared dataset dir (mlet-prep output); with --raw: the training dataset, whose "
        "vocabulary encodes the raw values (default: the one the serving manifest names)",
    )
    p.add_argument(
        "--raw",
        type=Path,
        default=None,
        metavar="FILE",
        help="score raw Criteo TSV / Avazu CSV lines (plain or gzip) instead of a prepared split",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True, help="predictions: .parquet, .csv or .tsv")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="table precision")
    p.add_argument(
        "--compare", action="store_true", help="with fp16/int8: also score in fp32 and report the AUC/logloss change"
    )
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument(
        "--metrics-out",
        type=Path,
        default=None,
        help="also write the report as JSON here (with --raw: every rejected line, up to 1000)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (default: shown when stderr is a terminal, as mlet-train)",
    )
    return p


def check_dataset(sd: ServingDir, data: Path) -> List[str]:
    """Warnings for a dataset other than the one the model was trained on (errors raise)."""
    from data_prep.dataset_format import META_FILE, read_meta

    meta = read_meta(data)
    trained = sd.manifest.get("dataset") or {}
    tables = rows_per_feature(sd.manifest["tables"])
    sizes = {f: int(n) for f, n in meta["table_sizes"].items()}
    wrong = {f: (sizes.get(f), n) for f, n in tables.items() if sizes.get(f) != n}
    if wrong:
        shown = ", ".join(f"{f}: data {a} vs model {b}" for f, (a, b) in list(wrong.items())[:5])
        raise ValueError(
            f"the dataset's vocabulary does not match the serving tables ({shown}): it was prepared "
            "with another vocabulary; prepare the data with the training dataset's vocabulary"
        )
    warnings = []
    if trained.get("meta_sha256") and sha256_file(Path(data) / META_FILE) != trained["meta_sha256"]:
        warnings.append(
            "the dataset's meta.json differs from the training dataset's (same table sizes): its ids "
            "must come from the same vocabulary, or the predictions mean nothing"
        )
    return warnings


def _cannot_write(flag: str, path: Path, err: OSError) -> ValueError:
    return ValueError(f"{flag} {path}: cannot write there ({err.strerror or err}); nothing was written")


def check_writable(path: Path, flag: str) -> None:
    """Create ``path``'s folder and a scratch file in it: a read-only or misspelt location fails
    before minutes of scoring, not after them."""
    probe = path.with_name(f".{path.name}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise _cannot_write(flag, path, err) from None


def write_atomically(path: Path, flag: str, write: Callable[[Path], object]) -> None:
    """``write(tmp)``, then rename it to ``path`` (readers never see a partial file); a full or
    read-only disk is one ValueError naming ``flag``, and the partial file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as err:  # pyarrow's write errors are OSErrors too
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _cannot_write(flag, path, err) from None


def write_predictions(path: Path, result: ScoreResult, lines: Optional[np.ndarray] = None) -> None:
    """prob (and label) per row; ``lines``: the raw input line of each row (--raw skips rejected ones)."""
    columns: Dict[str, Any] = {"prob": pa.array(result.probs.numpy().astype(np.float32))}
    if result.labels is not None:
        columns["label"] = pa.array(result.labels.numpy().astype(np.int8))
    if lines is not None:
        columns["line"] = pa.array(np.asarray(lines, np.int64))
    table = pa.table(columns)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        options = pacsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ",")
        write_atomically(path, "--out", lambda tmp: pacsv.write_csv(table, tmp, options))
    else:
        write_atomically(path, "--out", lambda tmp: pq.write_table(table, tmp))


OUT_SUFFIXES = (".parquet", ".csv", ".tsv")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.out.suffix.lower() not in OUT_SUFFIXES:  # x.json used to get parquet bytes, silently
        raise ValueError(
            f"--out {args.out}: predictions are written as {', '.join(OUT_SUFFIXES)}; "
            f"name the file with one of these suffixes (e.g. {args.out.with_suffix('.parquet')})"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare and args.precision == "fp32":
        raise ValueError("--compare compares fp16/int8 with fp32: give --precision fp16 or int8")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch.cuda.is_available() is False here")
    if args.raw is None and args.data is None:
        raise ValueError("give --data DATA (a prepared dataset to score) or --raw FILE (raw lines)")
    if args.raw is not None and args.max_batches is not None:
        raise ValueError("--max-batches cuts a prepared split; with --raw every line is scored or reported")
    check_writable(args.out, "--out")
    if args.metrics_out is not None:
        check_writable(args.metrics_out, "--metrics-out")
    model, sd = load_serving_model(args.serving, device=args.device)
    stream: BatchSource
    if args.raw is not None:
        stream, data = raw_stream(sd, args)
        warnings: List[str] = list(stream.vocab.warnings)  # e.g. no vocabulary sha256 (data_prep/vocabulary.py)
    else:
        data = args.data
        warnings = check_dataset(sd, data)
        stream = ScoringStream(
            data, args.split, args.batch_size, rows_per_feature(sd.manifest["tables"]), args.max_batches
        )
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    progress = not args.no_progress and sys.stderr.isatty()  # a log file or pipe gets no bar lines
    report: Dict[str, Any] = {
        "serving": str(args.serving),
        "data": str(data),
        "split": "raw" if args.raw is not None else args.split,
        "labels": stream.has_labels,
    }
    device = torch.device(args.device)
    baseline: Optional[ScoreResult] = None
    if args.compare:
        baseline = score(model, stream, progress, desc=f"{report['split']} fp32", device=device)
        report["fp32"] = {**baseline.metrics(), "rows_per_s": baseline.rows_per_s}
    memory = quantize_serving_model(model, args.precision)
    result = score(model, stream, progress, desc=f"{report['split']} {args.precision}", device=device)
    write_predictions(args.out, result, stream.lines if isinstance(stream, RawScoringStream) else None)
    if isinstance(stream, RawScoringStream):
        report["raw"] = stream.report.as_dict()
    report.update(
        precision=args.precision,
        out=str(args.out),
        metrics=result.metrics(),
        rows=result.rows,
        seconds=result.seconds,
        rows_per_s=result.rows_per_s,
        table_bytes=memory.table_bytes,
        fp32_table_bytes=memory.fp32_bytes,
        table_memory_saved=memory.saved_fraction,
        warnings=warnings,
    )
    if baseline is not None:
        m, b = result.metrics(), baseline.metrics()
        report["vs_fp32"] = {
            "max_abs_prob_diff": float((result.probs - baseline.probs).abs().max()) if result.rows else 0.0,
            **{f"{k}_change": m[k] - b[k] for k in ("auc", "logloss") if k in m and k in b},
        }
    return report


def raw_stream(sd: ServingDir, args: argparse.Namespace) -> Tuple[RawScoringStream, Path]:
    """The raw file's stream and the training dataset whose vocabulary encodes it: --data, or the
    dataset the manifest names, refused unless its meta.json is the one the model was trained with."""
    from data_prep.dataset_format import read_meta

    data = dataset_root(sd, args.data)
    if data is None:
        recorded = (sd.manifest.get("dataset") or {}).get("data_dir")
        raise ValueError(
            f"--raw needs the training dataset's vocabulary, and the serving manifest's dataset "
            f"{recorded or '(none recorded)'} is not there: pass --data TRAINING_DATASET_DIR"
        )
    meta = read_meta(data)
    tables = rows_per_feature(sd.manifest["tables"])
    wrong = {
        f: (int(meta["table_sizes"].get(f, -1)), n)
        for f, n in tables.items()
        if int(meta["table_sizes"].get(f, -1)) != n
    }
    if wrong:
        raise ValueError(f"{data} is not the training dataset of this model (table sizes differ: {wrong})")
    vocab = Vocabulary.load(data)
    return RawScoringStream(args.raw, meta, vocab, tables, args.batch_size), data


MAX_PRINTED_REJECTS = 10


def print_raw(raw: Dict[str, Any]) -> None:
    """The raw file's accounting: lines scored / rejected (each with its line), OOV values."""
    print(
        f"raw {raw['file']}: {raw['rows_read']} lines, {raw['rows_scored']} scored, "
        f"{raw['rows_rejected']} rejected ({'with' if raw['labeled'] else 'without'} labels)"
    )
    for r in raw["rejects"][:MAX_PRINTED_REJECTS]:
        print(f"  rejected {raw['file']}:{r['line']}: {r['reason']}")
    if raw["rows_rejected"] > MAX_PRINTED_REJECTS:
        print(
            f"  ... and {raw['rows_rejected'] - MAX_PRINTED_REJECTS} more (--metrics-out lists up to "
            f"{len(raw['rejects'])})"
        )
    unknown = {f: n for f, n in raw["unknown_values"].items() if n}
    shown = ", ".join(f"{f} {n}" for f, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:8])
    more = ", ..." if len(unknown) > 8 else ""
    print(
        f"unknown values -> OOV id {raw['oov_id']}: {raw['unknown_total']}" + (f" ({shown}{more})" if unknown else "")
    )


def print_report(report: Dict[str, Any]) -> None:
    m = report["metrics"]
    if "raw" in report:
        print_raw(report["raw"])
    line = f"{report['split']}: {report['rows']} rows in {report['seconds']:.2f}s ({report['rows_per_s']:,.0f} rows/s)"
    if "auc" in m:
        line += f"  AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}"
    print(line)
    print(
        f"tables ({report['precision']}): {report['table_bytes'] / 2**20:.2f} MiB "
        f"(fp32 {report['fp32_table_bytes'] / 2**20:.2f} MiB, {100 * report['table_memory_saved']:.1f}% saved)"
    )
    if "vs_fp32" in report:
        v = report["vs_fp32"]
        parts = [f"{k.replace('_change', '')} {v[k]:+.5f}" for k in ("auc_change", "logloss_change") if k in v]
        print(f"vs fp32: {'  '.join(parts)}  max |dp| {v['max_abs_prob_diff']:.2e}")
    print(f"predictions: {report['out']}")


def predict_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The CLI, returning its report (for tests and scripts)."""
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
        print_report(report)
        if args.metrics_out is not None:
            text = json.dumps(report, indent=1, sort_keys=True) + "\n"
            write_atomically(args.metrics_out, "--metrics-out", lambda tmp: tmp.write_text(text))
    except (ServingDirError, ValueError, FileNotFoundError) as err:
        user_error_exit(err)
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    predict_main(argv)  # console scripts sys.exit() what main returns: return nothing


if __name__ == "__main__":
    main()

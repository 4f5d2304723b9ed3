"""Byte-identity check of mlet-prep: prepare small variants of every kind and print a sha256 per file.

A refactor of data_prep must not change what it writes. Run this on the commit before the change
(from a `git archive` snapshot) and on the working tree, with the same --work directory (meta.json
of --vocab-from names that path), and diff the two outputs:

    git archive HEAD | tar -x -C /tmp/head && (cd /tmp/head && python benchmarks/prep_identity.py \
        --work /tmp/pid) > head.txt
    python benchmarks/prep_identity.py --work /tmp/pid > now.txt && diff head.txt now.txt

Variants (small inputs from data_prep/samples/ and the tests' writers of foreign layouts): Criteo
Kaggle TSV with 1 and 2 workers, min_count, hashing by --hash-size and by the count-memory cap,
rejects, Criteo Terabyte day files (one gzip), Avazu with 1 and 2 workers, --vocab-from,
synthetic single- and multi-hot, planted, and the five converters mlet-prep runs (torchrec-npy,
nvtabular, from-mlperf-multihot, from-dlrm-npz, from-dlrm-bin). Every line is `variant/file sha256`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

SAMPLES = REPO / "data_prep" / "samples"
CRITEO = SAMPLES / "criteo_sample.tsv"
AVAZU = SAMPLES / "avazu_sample.csv"
SMALL = dict(rows_per_file=3000, row_group_rows=700)  # several part files and row groups per split


def _inputs(work: Path) -> Dict[str, Path]:
    """Derived raw inputs: Criteo with malformed lines, Terabyte day files (the last gzip)."""
    lines = CRITEO.read_bytes().splitlines(keepends=True)
    bad = list(lines)
    bad[10] = b"not\ta\tcriteo\tline\n"
    bad[500] = b"\n"
    bad[2000] = bad[2000].replace(b"\t", b"\tzz", 1)
    (work / "in").mkdir()
    (work / "in" / "criteo_bad.tsv").write_bytes(b"".join(bad))
    days = work / "in" / "days"
    days.mkdir()
    third = len(lines) // 3
    (days / "day_0").write_bytes(b"".join(lines[:third]))
    (days / "day_1").write_bytes(b"".join(lines[third : 2 * third]))
    with gzip.GzipFile(days / "day_2.gz", "wb", mtime=0) as f:
        f.write(b"".join(lines[2 * third :]))
    return {"criteo_bad": work / "in" / "criteo_bad.tsv", "days": days}


def _raw_variants(work: Path, inputs: Dict[str, Path]) -> Dict[str, Callable[[Path], object]]:
    from data_prep import prepare_avazu, prepare_criteo_kaggle, prepare_criteo_terabyte

    return {
        "criteo_w1": lambda o: prepare_criteo_kaggle(CRITEO, o, workers=1, **SMALL),
        "criteo_w2": lambda o: prepare_criteo_kaggle(CRITEO, o, workers=2, **SMALL),
        "criteo_min_count3": lambda o: prepare_criteo_kaggle(CRITEO, o, min_count=3, workers=1),
        "criteo_hash64_w2": lambda o: prepare_criteo_kaggle(CRITEO, o, hash_size=64, workers=2),
        "criteo_cap_w1": lambda o: prepare_criteo_kaggle(
            CRITEO, o, count_memory_mb=0.02, block_bytes=1 << 16, workers=1, **SMALL
        ),
        "criteo_cap_w2": lambda o: prepare_criteo_kaggle(
            CRITEO, o, count_memory_mb=0.02, block_bytes=1 << 16, workers=2, **SMALL
        ),
        "criteo_rejects_w1": lambda o: prepare_criteo_kaggle(inputs["criteo_bad"], o, workers=1),
        "criteo_rejects_w2": lambda o: prepare_criteo_kaggle(inputs["criteo_bad"], o, workers=2, block_bytes=1 << 16),
        "terabyte_w1": lambda o: prepare_criteo_terabyte([inputs["days"]], o, workers=1, **SMALL),
        "terabyte_w2": lambda o: prepare_criteo_terabyte([inputs["days"]], o, workers=2, block_bytes=1 << 16, **SMALL),
        "avazu_w1": lambda o: prepare_avazu(AVAZU, o, workers=1, **SMALL),
        "avazu_w2": lambda o: prepare_avazu(AVAZU, o, workers=2, block_bytes=1 << 16, **SMALL),
        "vocab_from_w1": lambda o: prepare_criteo_kaggle(
            inputs["criteo_bad"], o, workers=1, vocab_from=str(work / "out" / "criteo_w1")
        ),
    }


def _generated_variants(work: Path) -> Dict[str, Callable[[Path], object]]:
    from data_prep.generate.planted import PlantedSpec, generate_planted
    from data_prep.generate.synthetic import generate_dataset

    sizes = [5, 50, 500, 5000] + [97] * 22
    return {
        "synthetic": lambda o: generate_dataset(o, 9000, sizes, seed=3, **SMALL),
        "synthetic_multi_hot": lambda o: generate_dataset(o, 5000, sizes, seed=4, multi_hot=3, pooling={"C2": "mean"}),
        "planted": lambda o: generate_planted(o, PlantedSpec(rows=6000, tables=4, cardinality=(30,), rank=2, seed=5)),
    }


def _foreign_variants(work: Path) -> Dict[str, Callable[[Path], object]]:
    """The converters, through the CLI as a user runs them (the tests' writers of the upstream layouts)."""
    from data_prep.cli import main as prep_main
    from test_foreign_formats import _write_days, _write_nvt
    from test_foreign_formats_more import _reference_arrays, _write_bins, _write_mlperf, _write_npz

    src = work / "in"
    _write_days(src / "npy", [300, 250, 101])
    _write_nvt(src / "nvt", {"train": [120, 80], "validation": [60], "test": [50]})
    _write_mlperf(src / "mh", [120, 90, 41])
    npz = _write_npz(src / "npz", _reference_arrays())
    _write_bins(src / "bin", _reference_arrays(1))

    def cli(*argv: str) -> Callable[[Path], object]:
        def run(out: Path) -> object:
            with contextlib.redirect_stdout(io.StringIO()):
                code = prep_main([*argv, str(out), "--row-group-rows", "64"])
            if code:
                raise RuntimeError(f"mlet-prep {' '.join(argv)} exited {code}")
            return None

        return run

    return {
        "torchrec_npy": cli("torchrec-npy", str(src / "npy")),
        "nvtabular": cli("nvtabular", str(src / "nvt")),
        "mlperf_multihot": cli("from-mlperf-multihot", str(src / "mh")),
        "dlrm_npz": cli("from-dlrm-npz", str(npz)),
        "dlrm_bin": cli("from-dlrm-bin", str(src / "bin")),
    }


def digests(root: Path) -> List[str]:
    """`relative/path sha256` of every file under root, sorted."""
    return [
        f"{p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="scratch directory (emptied first; the same path for both runs)")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    variants = {**_raw_variants(work, _inputs(work)), **_generated_variants(work), **_foreign_variants(work)}
    for name, make in variants.items():
        if args.only is not None and name not in args.only:
            continue
        out = work / "out" / name
        make(out)
        for line in digests(out):
            print(f"{name}/{line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

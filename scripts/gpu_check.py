"""`make gpu-check`: does the CUDA path work on this machine, and how fast is it? One report.

    python scripts/gpu_check.py                 # one CUDA GPU: env, cuda tests, benchmarks (<= 8 min)
    python scripts/gpu_check.py --dry-run       # CPU, tiny sizes: the same code path, nothing measured
                                                # that means anything (tests/test_gpu_check.py runs it)

Sections, each with a time budget inside one deadline (--budget-s, default 480 s):
  env         torch / fbgemm-gpu / torchrec versions and where they were imported from (a GPU
              image's own triplet via PYTHONPATH works: docs/gpu.md), CUDA / nccl, the device, and
              whether every mlet_dist module imports with this triplet.
  tests       pytest -m cuda tests/test_cuda.py in a subprocess (on CPU they all skip, with reasons).
  benchmarks  benchmarks/bench_gpu.py in a subprocess: step, pipeline, collapse, serving.
Writes reports/gpu/<device>.json and <device>.md (--out-dir elsewhere); exits non-zero when the
environment is unusable or a cuda test failed (the report is written either way).
"""

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a GPU image may run the repo uninstalled (docs/gpu.md)
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
CUDA_TESTS = ROOT / "tests" / "test_cuda.py"
SECTIONS = ("env", "tests", "benchmarks")
BUDGET_S = {"env": 40.0, "tests": 150.0, "benchmarks": 280.0}  # sums to 470 of the 480 s deadline
# Modules that must import with the triplet (train.py's import tree, serving, planning, sweep report).
PROJECT_MODULES = (
    "mlet_dist.train",
    "mlet_dist.serving.predict_cli",
    "mlet_dist.serving.collapse_cli",
    "mlet_dist.planning.cli",
    "mlet_dist.distributed.sharded_mlet",
    "mlet_dist.serving.quantize",
)


def _version(module: str) -> Dict[str, Any]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # an ImportError, or a broken native library (OSError, RuntimeError)
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    return {
        "ok": True,
        "version": str(getattr(mod, "__version__", "unknown")),
        "from": str(Path(getattr(mod, "__file__", "") or "?").parent),
    }


def check_env(dry: bool) -> Dict[str, Any]:
    """Versions, device, and an import of every project module: what ran, for the report."""
    out: Dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    out["packages"] = {
        name: _version(name)
        for name in ("torch", "fbgemm_gpu", "torchrec", "numpy", "pyarrow", "torchmetrics", "tensordict", "iopath")
    }
    problems = [f"{n}: {v['error']}" for n, v in out["packages"].items() if not v["ok"]]
    if out["packages"]["torch"]["ok"]:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out["device"] = {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gb": round(props.total_memory / 1e9, 1),
                "count": torch.cuda.device_count(),
                "multiprocessors": props.multi_processor_count,
            }
            try:
                out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception as err:
                out["nccl"] = f"unknown ({type(err).__name__})"
                problems.append(f"nccl: {err}")
            try:  # one fbgemm CUDA op: the native library really loads and runs here
                import fbgemm_gpu  # noqa: F401

                x = torch.arange(8, device="cuda", dtype=torch.int64)
                offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(x)
                out["fbgemm_cuda_op"] = bool(int(offsets[-1]) == 28)
            except Exception as err:
                out["fbgemm_cuda_op"] = False
                problems.append(f"fbgemm CUDA op: {type(err).__name__}: {err}")
        elif not dry:
            problems.append(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    imports = {}
    for module in PROJECT_MODULES:
        try:
            importlib.import_module(module)
            imports[module] = "ok"
        except Exception as err:
            imports[module] = f"{type(err).__name__}: {err}"
            problems.append(f"import {module}: {imports[module]}")
    out["project_imports"] = imports
    out["problems"] = problems
    out["status"] = "ok" if not problems else "error"
    return out


def _env_for_children() -> Dict[str, str]:
    """Children see the repo first, then whatever PYTHONPATH held (a GPU image's --target dir)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), path) if p), PYTHONUNBUFFERED="1")


def run_cuda_tests(work: Path, timeout_s: float) -> Dict[str, Any]:
    """pytest -m cuda in a subprocess; per-test outcome, time and skip reason from its JUnit XML."""
    junit = work / "cuda_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        str(CUDA_TESTS),
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_env_for_children(), capture_output=True, text=True, timeout=max(timeout_s, 1)
        )
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = None, f"timed out after {timeout_s:.0f}s\n" + str(err.stdout or "")[-3000:]
    out: Dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "returncode": rc,
        "seconds": round(time.monotonic() - started, 2),
        "tests": {},
    }
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            entry: Dict[str, Any] = {"outcome": "passed", "seconds": round(float(case.get("time", 0)), 2)}
            for tag in ("skipped", "failure", "error"):
                node = case.find(tag)
                if node is not None:
                    entry["outcome"] = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
                    entry["reason"] = (node.get("message") or node.text or "")[:1500]
            out["tests"][case.get("name", "?")] = entry
    outcomes = [t["outcome"] for t in out["tests"].values()]
    out["counts"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    if rc is None:
        out["status"], out["output_tail"] = "timeout", tail
    elif rc == 0 and outcomes:
        out["status"] = "ok" if "passed" in outcomes else "skipped"
    else:
        out["status"], out["output_tail"] = "failed", tail
    return out


def run_benchmarks(work: Path, timeout_s: float, dry: bool) -> Dict[str, Any]:
    """benchmarks/bench_gpu.py in a subprocess with its own deadline a little inside ours; its
    JSON is rewritten after every section, so a timeout keeps the finished sections."""
    result = work / "bench.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--out",
        str(result),
        "--deadline-s",
        f"{max(timeout_s - 25, 1):.0f}",
        *(["--dry-run"] if dry else []),
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_env_for_children(), capture_output=True, text=True, timeout=max(timeout_s, 1)
        )
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = None, f"timed out after {timeout_s:.0f}s\n" + str(err.stdout or "")[-3000:]
    out: Dict[str, Any] = {"returncode": rc, "seconds": round(time.monotonic() - started, 2)}
    body = json.loads(result.read_text()) if result.is_file() else {"sections": {}}
    out["sections"] = body.get("sections", {})
    for name in ("step", "pipeline", "collapse", "serving"):
        out["sections"].setdefault(name, {"status": "missing", "reason": "the benchmark process ended before it"})
    statuses = {s.get("status") for s in out["sections"].values()}
    out["status"] = (
        "ok" if rc == 0 and statuses <= {"ok", "not available"} else ("timeout" if rc is None else "partial")
    )
    if out["status"] != "ok":
        out["output_tail"] = tail
    return out


def device_slug(env: Dict[str, Any], dry: bool) -> str:
    name = "cpu-dry-run" if dry else env.get("device", {}).get("name", "no-cuda-device")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _fmt(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "—"


def markdown(report: Dict[str, Any]) -> str:
    """The short human reading of the JSON: versions, tests, and each ratio."""
    env, tests, bench = report["env"], report["tests"], report["benchmarks"]["sections"]
    pk = env.get("packages", {})
    ver = ", ".join(f"{n} {pk[n].get('version', 'MISSING')}" for n in ("torch", "fbgemm_gpu", "torchrec") if n in pk)
    dev = env.get("device", {})
    lines = [f"# gpu-check: {report['device_slug']}", ""]
    if report["dry_run"]:
        lines += [
            "**DRY RUN on CPU** (tiny sizes, gloo): checks that the script runs; no figure here describes a GPU.",
            "",
        ]
    lines += [
        f"- when: {report['started_utc']}, {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget",
        f"- versions: {ver}; python {env.get('python')}; CUDA {env.get('torch_cuda')}; nccl {env.get('nccl', '—')}",
        f"- device: {dev.get('name', 'none')} ({dev.get('memory_gb', '—')} GB, sm {dev.get('capability', '—')})",
        f"- environment: {env['status']}" + (f" ({'; '.join(env['problems'])})" if env.get("problems") else ""),
        f"- cuda tests: {tests.get('status')} {tests.get('counts', {})}",
        "",
    ]
    for name, t in tests.get("tests", {}).items():
        lines.append(
            f"  - {name}: {t['outcome']} ({t['seconds']} s)" + (f" — {t['reason'][:200]}" if t.get("reason") else "")
        )
    lines += [
        "",
        "## Step time (1 rank, table-wise)",
        "",
        "| batch | variant | ms/step | samples/s | vs ebc_d16 | vs ebc_d64 |",
        "|---|---|---|---|---|---|",
    ]
    for batch, per in sorted(bench.get("step", {}).get("by_batch", {}).items(), key=lambda kv: int(kv[0])):
        for variant, t in per.items():
            lines.append(
                f"| {batch} | {variant} | {_fmt(t.get('median_ms'))} | {_fmt(t.get('samples_per_s'), ',.0f')} | "
                f"{_fmt(t.get('vs_ebc_d16'))} | {_fmt(t.get('vs_ebc_d64'))} |"
                + (f" {t.get('error') or t.get('skipped')}" if "error" in t or "skipped" in t else "")
            )
    step = bench.get("step", {})
    if step.get("status") != "ok":
        lines.append(f"\nstep: {step.get('status')} {step.get('error', step.get('reason', ''))}")
    pipe = bench.get("pipeline", {})
    lines += ["", "## Pipelined vs plain step", ""]
    if pipe.get("status") == "ok":
        bp = pipe.get("by_pipeline", {})
        lines.append(
            f"- batch {pipe.get('batch')}: plain {_fmt(bp.get('none', {}).get('mean_ms'))} ms, sparse-dist "
            f"{_fmt(bp.get('sparse-dist', {}).get('mean_ms'))} ms (pipelined modules: "
            f"{bp.get('sparse-dist', {}).get('pipelined_modules', '—')}); ratio {_fmt(pipe.get('pipelined_vs_plain'))}"
        )
    else:
        lines.append(f"- {pipe.get('status')}: {pipe.get('reason', pipe.get('error', ''))}")
    col = bench.get("collapse", {})
    lines += ["", "## Collapse", ""]
    if col.get("status") == "ok":
        lines.append(
            f"- T {col['table']} fp32 ({col['table_gb']:.2f} GB) · W {col['projection']}: collapse reads "
            f"{col['collapse_read_gbs']:.1f} GB/s; copy bandwidth {col['copy_bandwidth_gbs']:.1f} GB/s "
            f"(ratio {col['collapse_vs_copy_bandwidth']:.2f}); bound {col['collapse_bound_gbs']:.1f} GB/s "
            f"(ratio {col['collapse_vs_bound']:.2f})"
        )
    else:
        lines.append(f"- {col.get('status')}: {col.get('error', col.get('reason', ''))}")
    srv = bench.get("serving", {})
    lines += [
        "",
        "## Serving (collapsed d=16 DLRM forward)",
        "",
        "| batch | fp32 rows/s | int8 rows/s | int8/fp32 | max abs dp |",
        "|---|---|---|---|---|",
    ]
    for batch, per in sorted(srv.get("by_batch", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {batch} | {_fmt(per.get('fp32', {}).get('rows_per_s'), ',.0f')} | "
            f"{_fmt(per.get('int8', {}).get('rows_per_s'), ',.0f')} | {_fmt(per.get('int8_vs_fp32_rows_per_s'))} | "
            f"{_fmt(per.get('int8', {}).get('max_abs_prob_diff_vs_fp32'), '.1e')} |"
        )
    if srv.get("status") != "ok":
        lines.append(f"\nserving: {srv.get('status')} {srv.get('error', srv.get('reason', ''))}")
    return "\n".join(lines) + "\n"


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; the report says so")
    p.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "gpu")
    p.add_argument("--budget-s", type=float, default=480.0, help="deadline for the whole check")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out (tests, benchmarks)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    started, started_utc = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    deadline = started + args.budget_s
    skip = {s for s in args.skip.split(",") if s}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # the children's JUnit XML and bench JSON
    print(f"[gpu-check] env ({'dry run, cpu' if args.dry_run else 'cuda'})", flush=True)
    env = check_env(args.dry_run)
    report: Dict[str, Any] = {
        "dry_run": args.dry_run,
        "mode": "dry-run/cpu" if args.dry_run else "cuda",
        "started_utc": started_utc,
        "budget_s": args.budget_s,
        "env": env,
        "section_budgets_s": BUDGET_S,
    }
    usable = env["status"] == "ok" or (args.dry_run and env.get("packages", {}).get("torchrec", {}).get("ok"))

    def left(section: str) -> float:
        return min(BUDGET_S[section], deadline - time.monotonic())

    if "tests" in skip or not usable:
        report["tests"] = {"status": "skipped", "reason": "--skip tests" if "tests" in skip else "environment unusable"}
    else:
        print(f"[gpu-check] cuda tests (budget {left('tests'):.0f}s)", flush=True)
        report["tests"] = run_cuda_tests(work, left("tests"))
    if "benchmarks" in skip or not usable:
        reason = "--skip benchmarks" if "benchmarks" in skip else "environment unusable"
        report["benchmarks"] = {
            "status": "skipped",
            "reason": reason,
            "sections": {
                n: {"status": "skipped", "reason": reason} for n in ("step", "pipeline", "collapse", "serving")
            },
        }
    else:
        print(f"[gpu-check] benchmarks (budget {left('benchmarks'):.0f}s)", flush=True)
        report["benchmarks"] = run_benchmarks(work, left("benchmarks"), args.dry_run)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["device_slug"] = slug = device_slug(env, args.dry_run)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / f"{slug}.json", args.out_dir / f"{slug}.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    md_path.write_text(markdown(report))
    print(markdown(report))
    print(f"[gpu-check] wrote {json_path} and {md_path} in {report['seconds']:.0f}s")
    failed = not usable or report["tests"].get("status") in ("failed", "timeout")
    if not args.dry_run and report["tests"].get("status") == "skipped" and "tests" not in skip:
        failed = True  # on a GPU machine every cuda test must run
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

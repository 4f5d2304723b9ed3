"""Limits at the CLIs' edges (issue 32): hostile or absurd input gets one ``error:`` line and a
non-zero exit before any library sees it, never a traceback, a hang or a silent loss."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from data_prep.safe_json import MAX_JSON_DEPTH, JSONFileError, read_json_file

BIN = Path(sys.executable).parent
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError


def _one_error_line(stderr: str, *names: str) -> str:
    """The single non-empty stderr line, checked to be an error naming ``names``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and "error:" in lines[0], lines[-5:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _refused(capsys: pytest.CaptureFixture, main: Callable[[List[str]], object], argv: List[str], *names: str) -> str:
    """Run a CLI's main in this process: exit status 2 (returned or raised) and one error line."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2, code
    return _one_error_line(capsys.readouterr().err, *names)


def _run(argv: List[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --- 1. JSON from elsewhere: bounded size and nesting -------------------------------------------


def _nest(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_json_reader_bounds_depth_size_and_syntax(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text(_nest(MAX_JSON_DEPTH))
    assert read_json_file(f) is not None  # the limit itself is accepted
    for text, why in [
        (_nest(MAX_JSON_DEPTH + 1), "nested deeper"),
        (DEEP, "nested deeper"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nested deeper"),
        ("1" * 5000, "not valid JSON"),
        ("{not json", "not valid JSON"),
    ]:
        f.write_text(text)
        with pytest.raises(JSONFileError, match=why) as err:
            read_json_file(f, "thing")
        assert str(err.value).startswith(f"thing {f} ") and "\n" not in str(err.value)
    f.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(JSONFileError, match="not valid JSON"):
        read_json_file(f)
    f.write_text(json.dumps({"a": "x" * 2000}))
    with pytest.raises(JSONFileError, match="larger than"):
        read_json_file(f, max_bytes=1000)
    with pytest.raises(JSONFileError, match="cannot read"):
        read_json_file(tmp_path / "missing.json")


def test_deep_plan_spec_and_config_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mlet_dist.planning.cli import main as plan_main

    spec = tmp_path / "spec.json"
    spec.write_text('{"table_sizes": ' + DEEP + "}")
    out = tmp_path / "plan.json"
    base = ["--world", "1x2", "--device", "cpu", "--out", str(out)]
    _refused(capsys, plan_main, ["--spec", str(spec), *base], "table spec", str(spec), "nested deeper")
    meta = tmp_path / "data" / "meta.json"
    meta.parent.mkdir()
    meta.write_text('{"format_version": 2, "x": ' + DEEP + "}")
    _refused(capsys, plan_main, ["--spec", str(meta.parent), *base], str(meta), "nested deeper")
    config = tmp_path / "config.json"
    config.write_text('{"model": ' + DEEP + "}")
    _refused(capsys, plan_main, ["--config", str(config), *base], "config", str(config), "nested deeper")
    assert not out.exists()


def test_deep_plan_file_is_refused(tmp_path: Path) -> None:
    from mlet_dist.planning.plan_io import PlanMismatchError, load_plan

    plan = tmp_path / "plan.json"
    plan.write_text('{"plan": ' + DEEP + "}")
    with pytest.raises(PlanMismatchError, match="plan file .* nested deeper"):
        load_plan(plan)


def _deep_serving_dir(root: Path) -> Path:
    serving = root / "serving"
    serving.mkdir()
    (serving / "manifest.json").write_text('{"format": "mlet-serving", "model": ' + DEEP + "}")
    return serving


def test_deep_manifest_is_one_line_in_predict_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mlet_dist.serving.export_cli import main as export_main
    from mlet_dist.serving.predict_cli import predict_main

    serving = _deep_serving_dir(tmp_path)
    out = tmp_path / "preds.parquet"
    _refused(
        capsys,
        predict_main,
        ["--serving", str(serving), "--data", str(tmp_path), "--out", str(out)],
        "serving manifest",
        "nested deeper",
    )
    _refused(capsys, export_main, [str(serving), str(tmp_path / "artifact")], "serving manifest", "nested deeper")
    assert not out.exists() and not (tmp_path / "artifact").exists()


def test_deep_artifact_listing_and_contract_are_refused(tmp_path: Path) -> None:
    from mlet_dist.serving.export_artifact import ARTIFACT, CONTRACT, Artifact, ArtifactError, open_artifact

    (tmp_path / ARTIFACT).write_text(DEEP)
    with pytest.raises(ArtifactError, match="artifact listing .* nested deeper"):
        open_artifact(tmp_path)
    (tmp_path / CONTRACT).write_text(DEEP)
    with pytest.raises(ArtifactError, match="artifact contract .* nested deeper"):
        Artifact(tmp_path, {}).contract


def test_deep_meta_json_stops_mlet_train_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text('{"format_version": 2, "x": ' + DEEP + "}")
    proc = _run(["mlet-train", "--data", str(data), "--run-dir", str(tmp_path / "run")], tmp_path)
    assert proc.returncode != 0
    _one_error_line(proc.stderr, "meta.json", "nested deeper")


def test_deep_model_config_in_safetensors_weights_is_refused(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from mlet_dist.serving.export_weights import WEIGHTS_FORMAT, read_weights

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": WEIGHTS_FORMAT, "model_config": DEEP})
    with pytest.raises(JSONFileError, match="model_config metadata is nested deeper"):
        read_weights(path)


# --- 2. sizes TorchRec would choke on: k, d, world, table rows --------------------------------


@pytest.fixture
def no_torchrec_planning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal must come before TorchRec's planner (which grows without end on -k 1e9)."""
    from mlet_dist.planning import planner

    def reached(*_: object, **__: object) -> None:
        raise AssertionError("TorchRec's planner was reached")

    monkeypatch.setattr(planner, "plan_tables", reached)
    monkeypatch.setattr(planner, "build_planning_model", reached)


def _spec(tmp_path: Path, sizes: dict) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"table_sizes": sizes, "dense_features": 13}))
    return path


def _plan_argv(tmp_path: Path, *extra: str, sizes: dict = {"a": 1000, "b": 10}) -> List[str]:
    return ["--spec", str(_spec(tmp_path, sizes)), "--device", "cpu", "--out", str(tmp_path / "p.json"), *extra]


@pytest.mark.parametrize(
    "extra, names",
    [
        (["-k", "1000000000"], ["--inner-dim", "16384"]),
        (["--model", "baseline", "-d", "100000"], ["--embedding-dim", "16384"]),
        (["--ddr-gb", "1e30"], ["--ddr-gb", "1048576"]),
    ],
)
def test_plan_refuses_absurd_widths_and_memory(
    extra: List[str], names: List[str], tmp_path: Path, capsys: pytest.CaptureFixture, no_torchrec_planning: None
) -> None:
    from mlet_dist.planning.cli import main as plan_main

    _refused(capsys, plan_main, _plan_argv(tmp_path, "--world", "1x2", *extra), *names)


def test_width_bound_holds_for_a_runs_config_and_mlet_train(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_torchrec_planning: None
) -> None:
    from mlet_dist.planning.cli import main as plan_main
    from mlet_dist.training.config import parse_args

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"embedding": {"inner_dim": 10**9}, "data": str(tmp_path)}))
    _refused(
        capsys,
        plan_main,
        ["--config", str(config), "--world", "1x2", "--device", "cpu", "--out", str(tmp_path / "p.json")],
        "--inner-dim",
        "16384",
    )
    with pytest.raises(ValueError, match="--inner-dim must be in"):
        parse_args(["--data", str(tmp_path), "-k", "1000000000"])


@pytest.mark.parametrize("world", ["100000x100000", "1x2000", "65537x1"])
def test_plan_refuses_a_world_beyond_any_cluster(
    world: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_torchrec_planning: None
) -> None:
    from mlet_dist.planning.cli import main as plan_main
    from mlet_dist.planning.topology import parse_world

    with pytest.raises(SystemExit) as exc:
        plan_main(_plan_argv(tmp_path, "--world", world))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line][-1].endswith("in all")  # argparse: usage + 1 line
    assert parse_world("65536x1") == (65536, 1) and parse_world("64x1024") == (64, 1024)


@pytest.mark.parametrize("rows, why", [(10**20, "<= 2\\*\\*63-1"), (2**62, "beyond int64")])
def test_plan_refuses_tables_beyond_int64(
    rows: int, why: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_torchrec_planning: None
) -> None:
    import re

    from mlet_dist.planning.cli import main as plan_main

    line = _refused(capsys, plan_main, _plan_argv(tmp_path, "--world", "1x2", sizes={"a": rows, "b": 10}))
    assert re.search(why, line), line


# --- 3. sweep YAML: safe tags, one-line syntax errors, no alias bombs -------------------------


def _alias_bomb(levels: int = 9) -> str:
    """train_args whose last entry expands to 9**levels strings (a few hundred bytes of YAML)."""
    names = [chr(97 + i) for i in range(levels)]
    lists = ["&a [" + ", ".join(["x"] * 9) + "]"]
    lists += [f"&{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return "name: bomb\ndata: nowhere\ntrain_args: [" + ", ".join(lists) + "]\n"


ALIAS_BOMB = _alias_bomb()


@pytest.mark.parametrize(
    "text, why",
    [
        ("name: x\ndata: d\ngrid: !!python/object/apply:os.system [echo pwned]\n", "could not determine a constructor"),
        ("name: x\ndata: d\ngrid: {mlet: [1, 2\n", "line "),
        ("name: x\n\tdata: d\n", "line 2"),
        (ALIAS_BOMB, "aliases"),
    ],
)
def test_sweep_yaml_mistakes_are_one_line(text: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mlet_dist.sweep.cli import main as sweep_main

    config = tmp_path / "sweep.yaml"
    config.write_text(text)
    line = _refused(capsys, sweep_main, ["--config", str(config), "--dry-run"], str(config), why)
    assert "pwned" not in line or "python/object" in line


def test_sweep_json_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mlet_dist.sweep.cli import main as sweep_main

    config = tmp_path / "sweep.json"
    config.write_text('{"grid": ' + DEEP + "}")
    _refused(capsys, sweep_main, ["--config", str(config), "--dry-run"], str(config), "nested deeper")


# --- 4. full or read-only output locations: one line, nothing published -----------------------


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> "tuple[Path, Path]":
    """(dataset, serving dir) of a small untrained MLET DLRM: enough to reach the writes."""
    import torch
    from torchrec.models.dlrm import DLRMTrain

    from data_prep.criteo import prepare_criteo_kaggle
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from mlet_dist.serving import write_serving_dir
    from mlet_dist.serving.model import ServingModelConfig
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("serving")
    data = root / "data"
    prepare_criteo_kaggle(str(Path(__file__).resolve().parents[1] / "data_prep/samples/criteo_sample.tsv"), data)
    meta = json.loads((data / "meta.json").read_text())
    sizes = {f: int(meta["table_sizes"][f]) for f in meta["sparse_features"]}
    spec = EmbeddingSpec(embedding_dim=4, inner_dim=8, mlet=True)
    mlps = DLRMConfig(dense_in_features=len(meta["dense_features"]), bottom_mlp=[8], top_mlp=[8, 1])
    torch.manual_seed(0)
    model = DLRMTrain(build_dlrm(build_embedding_collection(sizes, spec), mlps)).eval()
    config = ServingModelConfig.from_train_config(
        SimpleNamespace(embedding=spec, dlrm=mlps), sizes, len(meta["dense_features"])
    )
    return data, write_serving_dir(model, root / "serving", config, dataset=data).path


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder nobody can create: below a regular file (ENOTDIR even for root, who ignores chmod)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "out"


def test_predict_to_an_unwritable_or_full_location_is_one_line(
    serving: "tuple[Path, Path]", tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mlet_dist.serving.predict_cli import predict_main

    data, serving_dir = serving
    base = ["--serving", str(serving_dir), "--data", str(data), "--split", "val", "--no-progress"]
    out = _unwritable_dir(tmp_path) / "preds.parquet"
    _refused(capsys, predict_main, [*base, "--out", str(out)], "--out", str(out), "cannot write there")
    good = tmp_path / "preds.parquet"
    _refused(
        capsys,
        predict_main,
        [*base, "--out", str(good), "--metrics-out", str(out.with_suffix(".json"))],
        "--metrics-out",
    )
    assert not good.exists()
    (tmp_path / "full").mkdir()
    for name in ("preds.parquet", "preds.csv"):
        full = tmp_path / "full" / name
        (full.parent / f".{name}.tmp").symlink_to("/dev/full")  # the predictions' temporary file: ENOSPC
        _refused(capsys, predict_main, [*base, "--out", str(full)], "--out", "No space left on device")
        assert list(full.parent.iterdir()) == []  # no partial file, nothing published
    predict_main([*base, "--out", str(good)])  # the same command to a good place works
    assert good.is_file()


def test_export_to_an_unwritable_or_full_location_is_one_line(
    serving: "tuple[Path, Path]", tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from mlet_dist.serving import export_artifact as artifact
    from mlet_dist.serving.export_cli import main as export_main

    _, serving_dir = serving
    out = _unwritable_dir(tmp_path) / "artifact"
    _refused(
        capsys, export_main, [str(serving_dir), str(out), "--precision", "fp32"], str(out), "nothing was published"
    )

    def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "weights.safetensors")

    monkeypatch.setattr(artifact, "save_weights", disk_full)  # a disk that fills up during the export
    out = tmp_path / "artifact"
    _refused(capsys, export_main, [str(serving_dir), str(out), "--precision", "fp32"], "No space left on device")
    assert list(tmp_path.iterdir()) == [tmp_path / "a_file"]  # neither the artifact nor its .partial staging


# --- 5. a clean console: no library warnings on a plain CPU export / predict --------------------


def test_export_and_predict_print_no_warnings(serving: "tuple[Path, Path]", tmp_path: Path) -> None:
    """Each warning silenced is known-harmless and named by its message (log_setup.NOISE)."""
    data, serving_dir = serving
    runs = [
        ["mlet-export", str(serving_dir), str(tmp_path / "artifact"), "--precision", "int8"],
        [
            "mlet-predict",
            "--serving",
            str(serving_dir),
            "--data",
            str(data),
            "--split",
            "val",
            "--no-progress",
            "--precision",
            "int8",
            "--compare",
            "--out",
            str(tmp_path / "p.parquet"),
        ],
    ]
    noisy = {}
    for argv in runs:
        proc = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "MLET_VERBOSE": ""},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        if proc.stderr.strip():  # no UserWarning, nothing at all
            noisy[argv[0]] = proc.stderr[-2000:]
    assert not noisy, noisy


# --- 6. what the artifact's sha256 does not do (README: integrity, not authenticity) ------------


def test_a_swapped_module_with_a_rewritten_digest_loads(serving: "tuple[Path, Path]", tmp_path: Path) -> None:
    """The documented limit, kept true: if signing is ever added, this test and the README change."""
    import torch

    from mlet_dist.digests import file_entry
    from mlet_dist.serving.export_artifact import ARTIFACT, export_artifact, load_predict_module, module_file

    _, serving_dir = serving
    out = export_artifact(serving_dir, tmp_path / "artifact", ["fp32"]).path

    class Constant(torch.nn.Module):
        def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            return {"default": torch.full_like(batch["float_features"][:, 0], 0.5)}

    name = module_file("fp32")
    torch.jit.script(Constant()).save(str(out / name))
    listing = json.loads((out / ARTIFACT).read_text())
    listing["files"][name] = file_entry(out / name)  # the digest rewritten to match the swap
    (out / ARTIFACT).write_text(json.dumps(listing))
    swapped = load_predict_module(out, "fp32")
    assert swapped({"float_features": torch.zeros(3, 13)})["default"].tolist() == [0.5, 0.5, 0.5]

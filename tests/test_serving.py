"""Serving directory, safe loading, quantized tables and the CLIs, in one process (fast).

The multi-rank path (2-rank training + owner-side collapse, loads on other world sizes) is in
tests/test_serving_distributed.py.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed.checkpoint as dcp

import equivalence_setup as setup
from dist_launch import ROOT
from mlet_dist.distributed.collapse import collapse_model, collapse_state_dict
from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
from mlet_dist.models import dcn as dcn_mod  # imported, not importorskip'ed: a broken module must fail
from mlet_dist.planning.plan_io import check_plan_fits, load_plan
from mlet_dist.serving import (
    ServingDirError,
    ServingModelConfig,
    TableSpec,
    build_serving_model,
    write_serving_dir,
    load_serving_model,
    open_serving_dir,
    quantize_serving_model,
)
from mlet_dist.serving import predict_cli
from mlet_dist.serving.manifest import MANIFEST, sha256_file
from mlet_dist.distributed.safe_dcp import SafeFileSystemReader, UnsafeCheckpointError, safe_read_metadata
from torchrec.models.dlrm import DLRMTrain


def small_config(d: int = 8, k: int = 64) -> ServingModelConfig:
    return ServingModelConfig(
        arch="dlrm",
        dense_in_features=setup.NUM_DENSE,
        dense_arch_layer_sizes=[16, d],
        over_arch_layer_sizes=[16, 1],
        tables=[TableSpec(f"t_{f}", n, d, [f], "SUM", k) for f, n in setup.TABLE_SIZES.items()],
        bottom_mlp_output="linear",  # setup.build_model's DLRMConfig default
    )


def trained_small_model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = setup.build_model(torch.device("cpu"), mlet=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        model(setup.batch_for(step, 0, 32, 32))[0].backward()
        opt.step()
    return model.eval()


def logits(model: torch.nn.Module, step: int = 9) -> torch.Tensor:
    with torch.no_grad():
        return model(setup.batch_for(step, 0, 64, 64))[1][1]


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory):
    model = trained_small_model()
    out = tmp_path_factory.mktemp("small") / "serving"
    export = write_serving_dir(model, out, small_config(), source={"test": True})
    return model, export


# --- collapse on a state dict ---------------------------------------------------------------


def test_collapse_state_dict_equals_collapse_model() -> None:
    model = trained_small_model()
    reference = collapse_model(model).state_dict()
    collapsed, stats = collapse_state_dict(model.state_dict(), chunk_rows=7)
    assert list(collapsed) == list(reference)
    for key, value in reference.items():
        assert torch.equal(collapsed[key], value), key
    assert stats.total_k_bytes == sum(setup.TABLE_SIZES.values()) * 64 * 4
    assert stats.total_d_bytes == sum(setup.TABLE_SIZES.values()) * 8 * 4


def test_collapse_state_dict_leaves_baseline_model_alone() -> None:
    state = setup.build_model(torch.device("cpu"), mlet=False).state_dict()
    collapsed, stats = collapse_state_dict(state)
    assert list(collapsed) == list(state) and stats.tables == []
    assert all(collapsed[k] is state[k] for k in state)


def test_collapse_state_dict_rejects_bad_input() -> None:
    state = trained_small_model().state_dict()
    with pytest.raises(ValueError, match="chunk_rows"):
        collapse_state_dict(state, chunk_rows=0)
    del state["model.sparse_arch.embedding_bag_collection.projections.t_C1.weight"]
    with pytest.raises(KeyError, match="without its projection"):
        collapse_state_dict(state)


# --- export and load in one process -----------------------------------------------------------


def test_export_load_roundtrip(small_export) -> None:
    model, export = small_export
    served, sd = load_serving_model(export.path)
    assert isinstance(served, DLRMTrain)
    assert not any("mlet_dist" in type(m).__module__ for m in served.modules())
    assert (logits(served) - logits(model)).abs().max() <= 1e-6
    manifest = sd.manifest
    assert set(manifest["checkpoint"]["keys"]) == set(collapse_model(model).state_dict())
    assert {t["name"]: (t["num_embeddings"], t["embedding_dim"], t["inner_dim"]) for t in manifest["tables"]} == {
        f"t_{f}": (n, 8, 64) for f, n in setup.TABLE_SIZES.items()
    }
    assert manifest["source"] == {"world_size": 1, "test": True}
    for name, entry in manifest["files"].items():
        assert sha256_file(export.path / name) == entry["sha256"]
    plan, data = load_plan(export.path / "serving_plan.json")
    check_plan_fits(plan, build_serving_model(sd.model_config, torch.device("meta")), 1, "cpu", data["topology"])


def test_export_refuses_existing_output_and_mismatched_config(small_export, tmp_path: Path) -> None:
    model, export = small_export
    with pytest.raises(ServingDirError, match="already exists"):
        write_serving_dir(model, export.path, small_config())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    with pytest.raises(ServingDirError, match="not a serving directory"):
        write_serving_dir(model, tmp_path / "notes", small_config(), overwrite=True)
    with pytest.raises(ServingDirError, match="expects"):
        write_serving_dir(
            model,
            tmp_path / "wrong_d",
            small_config(d=8, k=64).__class__(**{**small_config().__dict__, "dense_in_features": setup.NUM_DENSE + 1}),
        )
    assert not (tmp_path / "wrong_d").exists() and not (tmp_path / "wrong_d.partial").exists()
    relu = ServingModelConfig(**{**small_config().__dict__, "bottom_mlp_output": "relu"})
    with pytest.raises(ServingDirError, match="bottom MLP ends linear.*would serve another function"):
        write_serving_dir(model, tmp_path / "relu", relu)  # stock DLRM's ReLU would silently change every score
    assert not (tmp_path / "relu").exists()


def _copy(export_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(export_path, dst)
    return dst


def _rewrite_manifest(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_tampered_serving_dirs_are_refused(small_export, tmp_path: Path) -> None:
    _, export = small_export
    d = _copy(export.path, tmp_path)
    shard = next((d / "checkpoint").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ServingDirError, match="sha256 differs"):
        open_serving_dir(d)
    with pytest.raises(ServingDirError, match="sha256 differs"):
        load_serving_model(d)

    d = _copy(export.path, tmp_path / "b")
    (d / "checkpoint" / "__9_0.distcp").write_bytes(b"extra")
    with pytest.raises(ServingDirError, match="present but not listed"):
        open_serving_dir(d)

    d = _copy(export.path, tmp_path / "c")
    _rewrite_manifest(d, lambda m: m["model"]["tables"][0].update(num_embeddings=98))
    with pytest.raises(ServingDirError, match="manifest shape"):
        open_serving_dir(d)

    d = _copy(export.path, tmp_path / "d")
    key = "model.over_arch.model.1.weight"
    _rewrite_manifest(d, lambda m: m["checkpoint"]["keys"][key].update(dtype="float16"))
    with pytest.raises(ServingDirError, match="checkpoint has"):
        open_serving_dir(d)

    d = _copy(export.path, tmp_path / "e")
    (d / "serving_plan.json").unlink()
    with pytest.raises(ServingDirError, match="serving_plan.json: missing"):
        open_serving_dir(d)

    d = _copy(export.path, tmp_path / "f")
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(ServingDirError, match="not valid JSON"):
        open_serving_dir(d)
    (d / MANIFEST).unlink()
    with pytest.raises(ServingDirError, match="no manifest.json"):
        open_serving_dir(d)


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.getcwd, ())  # harmless, but no DCP checkpoint calls anything


def test_crafted_metadata_is_never_unpickled_even_with_matching_checksums(small_export, tmp_path: Path) -> None:
    _, export = small_export
    d = _copy(export.path, tmp_path)
    (d / "checkpoint" / ".metadata").write_bytes(pickle.dumps(_Payload()))
    _rewrite_manifest(
        d,
        lambda m: m["files"]["checkpoint/.metadata"].update(
            sha256=sha256_file(d / "checkpoint" / ".metadata"), bytes=(d / "checkpoint" / ".metadata").stat().st_size
        ),
    )
    with pytest.raises(ServingDirError, match="posix.getcwd|os.getcwd|refusing"):
        open_serving_dir(d)
    with pytest.raises(UnsafeCheckpointError):
        safe_read_metadata(d / "checkpoint" / ".metadata")


def test_safe_reader_drops_byte_entries(tmp_path: Path) -> None:
    dcp.save({"w": torch.ones(3), "extra": {"note": "pickled object"}}, checkpoint_id=str(tmp_path))
    metadata = SafeFileSystemReader(tmp_path).read_metadata()
    assert list(metadata.state_dict_metadata) == ["w"]
    state = {"w": torch.zeros(3)}
    dcp.load(state, storage_reader=SafeFileSystemReader(tmp_path), no_dist=True)
    assert torch.equal(state["w"], torch.ones(3))
    with pytest.raises(BaseException, match="Missing key in checkpoint state_dict: extra"):  # DCP's is a BaseException
        dcp.load({"extra": {"note": ""}}, storage_reader=SafeFileSystemReader(tmp_path), no_dist=True)


# --- quantized tables (fbgemm-gpu-cpu) -------------------------------------------------------


@pytest.mark.parametrize("precision,tol,saved", [("fp16", 1e-3, 0.45), ("int8", 2e-2, 0.55)])
def test_quantized_tables_run_on_cpu(small_export, precision: str, tol: float, saved: float) -> None:
    model, export = small_export
    served, _ = load_serving_model(export.path)
    reference = torch.sigmoid(logits(served))
    memory = quantize_serving_model(served, precision)
    assert type(served.model.sparse_arch.embedding_bag_collection).__module__ == "torchrec.quant.embedding_modules"
    diff = (torch.sigmoid(logits(served)) - reference).abs().max()
    assert 0 < diff <= tol
    assert memory.fp32_bytes == sum(setup.TABLE_SIZES.values()) * 8 * 4
    assert memory.saved_fraction >= saved


# --- DCN-v2 ---------------------------------------------------------------------------------


def test_dcnv2_collapses_into_stock_dlrm_dcn(tmp_path: Path) -> None:
    spec = EmbeddingSpec(embedding_dim=8, inner_dim=32, mlet=True)
    mlps = DLRMConfig(dense_in_features=setup.NUM_DENSE, bottom_mlp=[16], top_mlp=[16, 1])
    torch.manual_seed(5)
    model = DLRMTrain(
        dcn_mod.build_dcnv2(
            build_embedding_collection(setup.TABLE_SIZES, spec), mlps, dcn_mod.DCNConfig(cross_layers=2, low_rank=4)
        )
    ).eval()
    cfg = SimpleNamespace(embedding=spec, dlrm=mlps, arch="dcnv2", dcn=dcn_mod.DCNConfig(cross_layers=2, low_rank=4))
    config = ServingModelConfig.from_train_config(cfg, setup.TABLE_SIZES, setup.NUM_DENSE)
    export = write_serving_dir(model, tmp_path / "dcn", config)
    served, _ = load_serving_model(export.path)
    assert type(served.model).__name__ == "DLRM_DCN"
    assert (logits(served) - logits(model)).abs().max() <= 1e-5


# --- mlet-predict on a Criteo-shaped model -----------------------------------------------------


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory):
    from data_prep.criteo import prepare_criteo_kaggle

    root = tmp_path_factory.mktemp("criteo")
    data = root / "data"
    prepare_criteo_kaggle(str(ROOT / "data_prep/samples/criteo_sample.tsv"), data)
    meta = json.loads((data / "meta.json").read_text())
    sizes = {f: int(meta["table_sizes"][f]) for f in meta["sparse_features"]}
    spec = EmbeddingSpec(embedding_dim=8, inner_dim=16, mlet=True)
    mlps = DLRMConfig(dense_in_features=len(meta["dense_features"]), bottom_mlp=[16], top_mlp=[8, 1])
    torch.manual_seed(11)
    model = DLRMTrain(build_dlrm(build_embedding_collection(sizes, spec), mlps)).eval()
    config = ServingModelConfig.from_train_config(
        SimpleNamespace(embedding=spec, dlrm=mlps), sizes, len(meta["dense_features"])
    )
    export = write_serving_dir(model, root / "serving", config, dataset=data)
    return SimpleNamespace(root=root, data=data, serving=export.path, model=model, meta=meta, config=config)


def _predict(args) -> Dict:  # type: ignore[no-untyped-def]
    return predict_cli.predict_main([str(a) for a in args])


def test_predict_cli_scores_a_split(criteo, tmp_path: Path) -> None:
    from mlet_dist.data.parquet_batches import ParquetBatchStream
    from mlet_dist.training.evaluation import predict

    out = tmp_path / "preds.parquet"
    report = _predict(
        [
            "--serving",
            criteo.serving,
            "--data",
            criteo.data,
            "--split",
            "test",
            "--out",
            out,
            "--batch-size",
            100,
            "--no-progress",
            "--metrics-out",
            tmp_path / "m.json",
        ]
    )
    table = pq.read_table(out)
    assert table.num_rows == criteo.meta["splits"]["test"]["rows"] == report["rows"]
    expected = predict(
        criteo.model, ParquetBatchStream(criteo.data, "test", 100, drop_last=False), torch.device("cpu"), 1
    )
    assert (torch.tensor(table.column("prob").to_numpy()) - expected.probs).abs().max() <= 1e-6
    assert table.column("label").to_pylist() == expected.labels.int().tolist()
    assert report["metrics"]["auc"] == pytest.approx(expected.metrics()["auc"], abs=1e-6)
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == report["rows"]


def test_predict_cli_int8_compare_and_unlabeled_data(criteo, tmp_path: Path, capsys) -> None:
    report = _predict(
        [
            "--serving",
            criteo.serving,
            "--data",
            criteo.data,
            "--split",
            "val",
            "--out",
            tmp_path / "p.csv",
            "--precision",
            "int8",
            "--compare",
            "--no-progress",
        ]
    )
    assert abs(report["vs_fp32"]["auc_change"]) <= 0.01 and report["vs_fp32"]["max_abs_prob_diff"] < 0.05
    assert report["table_memory_saved"] > 0.6
    assert "vs fp32: auc" in capsys.readouterr().out
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == '"prob","label"'

    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(criteo.data, unlabeled)
    for part in (unlabeled / "test").glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop(["label"]), part)
    report = _predict(
        ["--serving", criteo.serving, "--data", unlabeled, "--out", tmp_path / "u.parquet", "--no-progress"]
    )
    assert report["labels"] is False and "auc" not in report["metrics"]
    assert pq.read_table(tmp_path / "u.parquet").column_names == ["prob"]


def test_predict_cli_refuses_other_vocabulary_and_bad_flags(criteo, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(criteo.data, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["table_sizes"]["C3"] += 1
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="vocabulary does not match"):
        _predict(["--serving", criteo.serving, "--data", other, "--out", tmp_path / "x.parquet", "--no-progress"])
    with pytest.raises(SystemExit, match="--compare"):
        _predict(["--serving", criteo.serving, "--data", criteo.data, "--out", tmp_path / "x.parquet", "--compare"])
    with pytest.raises(SystemExit, match="no manifest.json"):
        _predict(["--serving", tmp_path, "--data", criteo.data, "--out", tmp_path / "x.parquet"])


def test_predict_cli_refuses_nan_predictions_in_one_line(criteo, tmp_path: Path, capsys) -> None:
    """A model whose predictions are NaN gets no AUC (NaN ranked above every score): one error
    line counting them, exit 2."""
    import copy

    broken = copy.deepcopy(criteo.model)
    with torch.no_grad():
        next(p for name, p in broken.named_parameters() if name.endswith("bias")).fill_(float("nan"))
    serving = write_serving_dir(broken, tmp_path / "serving", criteo.config, dataset=criteo.data).path
    with pytest.raises(SystemExit, match=r"^error: \d+ of \d+ probabilities are not finite") as stopped:
        _predict(
            [
                "--serving",
                serving,
                "--data",
                criteo.data,
                "--split",
                "test",
                "--out",
                tmp_path / "p.parquet",
                "--no-progress",
            ]
        )
    assert stopped.value.code == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line] == [str(stopped.value)]


# --- mlet-collapse from a run directory --------------------------------------------------------


def _tiny_run(criteo, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A run dir as train.py leaves it (config.json, metrics.jsonl config record, checkpoints/step-N
    holding {"model": ..., "optim": ...} and its checksums.json), without training: (run dir, model).
    Its config.json is one written before --bottom-mlp-output existed (no such key): such a run
    trained with the ReLU, which the file's legacy default restores."""
    from mlet_dist.config_io import save_config
    from mlet_dist.training.checkpoint_digest import digest_share, write_checksums
    from mlet_dist.training.config import parse_args

    run = tmp_path / "run"
    argv = ["--data", str(criteo.data), "-d", "8", "-k", "16", "--bottom-mlp", "16", "--top-mlp", "8,1"]
    cfg = parse_args(argv)
    sizes = {f: int(criteo.meta["table_sizes"][f]) for f in criteo.meta["sparse_features"]}
    torch.manual_seed(2)
    # a config.json without bottom_mlp_output is older than the flag: its bottom MLP ended in a ReLU
    mlps = DLRMConfig(
        dense_in_features=13, bottom_mlp=cfg.dlrm.bottom_mlp, top_mlp=cfg.dlrm.top_mlp, bottom_mlp_output="relu"
    )
    model = DLRMTrain(build_dlrm(build_embedding_collection(sizes, cfg.embedding), mlps)).eval()
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"event": "config", "argv": argv}) + "\n")
    save_config(run / "config.json", cfg)
    saved = json.loads((run / "config.json").read_text())
    del saved["dlrm"]["bottom_mlp_output"]
    (run / "config.json").write_text(json.dumps(saved))
    checkpoint = run / "checkpoints" / "step-00000003"
    dcp.save(
        {"model": model.state_dict(), "optim": {"step": torch.tensor(3.0), "groups": [{"lr": 0.1}]}},
        checkpoint_id=str(checkpoint),
    )
    write_checksums(checkpoint, digest_share(checkpoint, 0, 1))
    return run, model


def _collapse(run: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """mlet-collapse as a subprocess (it forms its own process group)."""
    return subprocess.run(
        [sys.executable, "-m", "mlet_dist.serving.collapse_cli", "--run-dir", str(run), "--out", str(out), *extra],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_collapse_cli_from_training_checkpoint(criteo, tmp_path: Path) -> None:
    run, model = _tiny_run(criteo, tmp_path)
    proc = _collapse(run, run / "serving", "--serve-world-size", "2", "--serve-sharding", "table_wise")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "newest training checkpoint" in proc.stdout
    served, sd = load_serving_model(run / "serving")
    assert sd.manifest["source"]["checkpoint"].endswith("step-00000003")
    assert sd.manifest["serving_topology"]["world_size"] == 2
    assert (logits_criteo(served, criteo) - logits_criteo(model, criteo)).abs().max() <= 1e-5
    plan, _ = load_plan(run / "serving" / "serving_plan.json")
    assert {ps.sharding_type for mp in plan.plan.values() for ps in mp.values()} == {"table_wise"}

    from mlet_dist.serving import collapse_cli

    with pytest.raises(SystemExit, match="already exists"):  # refused before any process group is formed
        collapse_cli.main(["--run-dir", str(run), "--out", str(run / "serving")])
    with pytest.raises(SystemExit, match="not a DCP checkpoint"):
        collapse_cli.main(["--run-dir", str(run), "--out", str(tmp_path / "s2"), "--checkpoint", str(tmp_path)])
    with pytest.raises(ValueError, match="no checkpoint in"):
        collapse_cli.select_checkpoint(tmp_path, None)


def _no_training_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlet-collapse must not replay a run's argv through today's training parser (issue 30)."""
    from mlet_dist.training import config as train_config

    def replayed(*_: object, **__: object) -> None:
        raise AssertionError("mlet-collapse called the training parser")

    monkeypatch.setattr(train_config, "parse_args", replayed)
    monkeypatch.setattr(train_config, "build_parser", replayed)


def test_collapse_cli_rebuilds_the_model_section_of_config_json(
    criteo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlet_dist.models.ranking import ModelConfig
    from mlet_dist.serving import collapse_cli

    run, _ = _tiny_run(criteo, tmp_path)
    _no_training_parser(monkeypatch)
    got = collapse_cli.run_model(run, None)
    assert type(got.model) is ModelConfig  # not a TrainConfig
    assert (got.model.embedding.inner_dim, got.model.embedding.embedding_dim, got.model.dlrm.bottom_mlp) == (
        16,
        8,
        [16],
    )
    assert got.model.dlrm.bottom_mlp_output == "relu"  # the file predates the key: what those runs trained
    assert got.data == criteo.data and got.sharding.owner_projection
    with pytest.raises(ValueError, match="elsewhere has no meta.json"):  # --data replaces the run's dataset
        collapse_cli.run_model(run, tmp_path / "elsewhere")


def test_collapse_cli_refuses_a_run_dir_without_config_json(
    criteo, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the version that first wrote config.json and what to do; nothing written,
    no replay of metrics.jsonl's argv (which today's parser would read with today's defaults)."""
    from mlet_dist.serving import collapse_cli

    run, _ = _tiny_run(criteo, tmp_path)
    (run / "config.json").unlink()
    _no_training_parser(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        collapse_cli.main(["--run-dir", str(run), "--out", str(run / "serving")])
    assert stopped.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert f"{run} has no config.json" in err[0] and "7d75c74" in err[0], err
    assert "collapse it with the version that trained it" in err[0], err
    assert not (run / "serving").exists()


def _zero_bytes_in_a_shard(checkpoint: Path) -> None:
    shard = checkpoint / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, says",
    [
        (_zero_bytes_in_a_shard, "__0_0.distcp: sha256 differs from checksums.json"),
        (lambda ckpt: (ckpt / "checksums.json").unlink(), "checksums.json missing"),
    ],
)
def test_collapse_cli_refuses_a_checkpoint_resume_would_skip(criteo, tmp_path: Path, damage, says: str) -> None:
    """Verified as resume verifies it: one error line, exit 2, no serving directory."""
    run, _ = _tiny_run(criteo, tmp_path)
    damage(run / "checkpoints" / "step-00000003")
    proc = _collapse(run, run / "serving")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "step-00000003 is damaged, nothing written" in errors[0] and says in errors[0], errors
    assert not (run / "serving").exists()


def logits_criteo(model: torch.nn.Module, criteo) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from mlet_dist.data.parquet_batches import ParquetBatchStream

    batch = next(iter(ParquetBatchStream(criteo.data, "val", 200, drop_last=False))).batch
    with torch.no_grad():
        return model(batch)[1][1]

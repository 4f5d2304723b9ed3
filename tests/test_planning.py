"""mlet-plan: offline MLET-aware planning, estimates, plan files, and the committed plans."""

import json
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

import pytest
import torch

from mlet_dist.planning import check_plan_fits, load_plan, save_plan
from mlet_dist.planning.cli import main
from mlet_dist.planning.estimators import FP32, process_overhead_bytes
from mlet_dist.planning.plan_io import plan_to_dict
from mlet_dist.planning.planner import (
    OrderedEnumerator,
    PlanDoesNotFitError,
    PlanResult,
    build_planning_model,
    plan_tables,
    table_constraints,
)
from mlet_dist.planning.planner import plan_request as PlanRequest  # model fields by name, e.g. inner_dim=K
from mlet_dist.planning.report import estimates
from mlet_dist.planning.spec import SpecError, load_table_spec, table_spec_from_dict
from mlet_dist.planning.topology import GIB, TopologyError, cluster_spec, parse_world

if TYPE_CHECKING:  # the annotation only; the tests import TorchRec's plan types where they use them
    from torchrec.distributed.types import ParameterSharding

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "sharding_plans"
SPECS = PLANS / "specs"
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"
SMALL = {"C1": 1000, "C2": 5000, "C3": 20000, "C4": 300}
K, D = 64, 16


def small_spec(sizes: Dict[str, int] = SMALL):
    return table_spec_from_dict({"name": "small", "table_sizes": dict(sizes), "dense_features": 13})


def plan_small(**kw) -> PlanResult:
    cluster = kw.pop("cluster", None) or cluster_spec("1x2", "cpu", ddr_gb=1)
    return plan_tables(PlanRequest(spec=small_spec(), cluster=cluster, inner_dim=K, embedding_dim=D, **kw))


def train_model(data_dir: Path, extra: List[str] = ()):
    """The model exactly as mlet_dist/train.py builds it (its own builder and argument parser)."""
    from mlet_dist.data.parquet_batches import DatasetMeta
    from mlet_dist.models.ranking import model_factory
    from mlet_dist.training.config import parse_args

    cfg = parse_args(["--data", str(data_dir), "-k", str(K), "-d", str(D), *extra])
    meta = DatasetMeta.load(data_dir)
    return model_factory(cfg.model, meta.table_sizes, len(meta.dense_features))(torch.device("meta"))


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep import prepare_criteo_kaggle

    out = tmp_path_factory.mktemp("data") / "criteo_sample"
    prepare_criteo_kaggle(SAMPLE, out)
    return out


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("1x2", (1, 2)), ("2x8", (2, 8)), (" 64X8 ", (64, 8))])
def test_parse_world(text: str, expected: tuple) -> None:
    assert parse_world(text) == expected


@pytest.mark.parametrize("text", ["2*8", "16", "x8", "2x", "0x8", "2x0", "2x8x1", "", "two x eight"])
def test_world_parse_errors_are_clear(text: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TopologyError, match=r"--world|nodes and ranks"):
        parse_world(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--spec", str(SPECS / "criteo_kaggle.json"), "--world", text, "--hbm-gb", "80", "-o", "x.json"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --world" in err and ("NxM" in err or "must both be >= 1" in err)


def test_memory_flags_are_checked() -> None:
    with pytest.raises(TopologyError, match="--hbm-gb"):
        cluster_spec("2x8", "cuda")
    with pytest.raises(TopologyError, match="--ddr-gb"):
        cluster_spec("1x2", "cpu", hbm_gb=80)
    with pytest.raises(TopologyError, match="must be > 0"):
        cluster_spec("1x2", "cuda", hbm_gb=0)
    spec = cluster_spec("2x8", "cuda", hbm_gb=80)
    assert spec.world_size == 16 and spec.mem_bytes == 80 * GIB
    assert spec.as_dict()["world_size"] == 16 and spec.as_dict()["local_world_size"] == 8


def test_spec_files_and_errors(tmp_path: Path, sample_dir: Path) -> None:
    kaggle = load_table_spec(SPECS / "criteo_kaggle.json")
    terabyte = load_table_spec(SPECS / "criteo_terabyte.json")
    assert len(kaggle.table_sizes) == len(terabyte.table_sizes) == 26
    assert list(kaggle.table_sizes)[:3] == ["C1", "C2", "C3"] and kaggle.num_dense == 13
    assert kaggle.total_rows == 33_762_577
    assert terabyte.total_rows == 882_774_559  # "~880M rows", uncapped
    meta = load_table_spec(sample_dir)  # a dataset dir, ordered by meta.json's sparse_features
    assert list(meta.table_sizes) == [f"C{i}" for i in range(1, 27)] and meta.num_dense == 13
    bad = tmp_path / "bad.json"
    for data, match in [
        ({"table_sizes": {}}, "table_sizes"),
        ({"table_sizes": {"a": 0}}, "positive integer"),
        ({"table_sizes": {"a": 3}, "dense_features": 0}, "dense_features"),
        ({"table_sizes": {"a": 3}, "sparse_features": ["a", "b"]}, "no table_sizes entry"),
    ]:
        bad.write_text(json.dumps(data))
        with pytest.raises(SpecError, match=match):
            load_table_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_table_spec(tmp_path / "missing.json")


# --- the CLI and plan files ------------------------------------------------------------------


def test_cli_writes_json_plan_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"table_sizes": SMALL, "dense_features": 13}))
    out = tmp_path / "plans" / "small.json"
    assert main(["--spec", str(spec), "--world", "1x2", "--device", "cpu", "--ddr-gb", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["format_version"] == 1
    assert data["topology"]["world_size"] == 2 and data["topology"]["compute_device"] == "cpu"
    tables = data["plan"]["model.sparse_arch.embedding_bag_collection"]
    assert sorted(tables) == [f"t_{f}" for f in sorted(SMALL)]
    assert data["made_by"]["command"].startswith("mlet-plan --spec")
    ranks = data["estimates"]["per_rank"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["training_total"] == r["tables_total"] + r["reserved_dense_and_inputs"] + r["process_overhead"]
        assert r["tables_total"] >= r["weights"] + r["optimizer"] + r["projections"]
    text = (tmp_path / "plans" / "small.txt").read_text()
    assert text in printed and "per rank" in text and "per table" in text
    for name in tables:
        assert name in text
    plan, _ = load_plan(out)
    assert set(plan.plan) == {"model.sparse_arch.embedding_bag_collection"}


def test_plan_json_round_trip(tmp_path: Path) -> None:
    for result in (
        plan_small(sharding="row_wise"),
        plan_small(sharding="data_parallel"),
        plan_small(sharding="column_wise", cw_shard_dim=16),
        plan_small(),
    ):
        path = tmp_path / "plan.json"
        save_plan(path, result.plan, result.request.cluster.as_dict(), estimates=estimates(result))
        loaded, data = load_plan(path)
        assert plan_to_dict(loaded, data["topology"]) == plan_to_dict(result.plan, result.request.cluster.as_dict())
        for module_path, module_plan in result.plan.plan.items():
            for table, ps in module_plan.items():
                back = loaded.plan[module_path][table]
                assert (back.sharding_type, back.compute_kernel, back.ranks) == (
                    ps.sharding_type,
                    ps.compute_kernel,
                    ps.ranks,
                )
                assert (back.sharding_spec is None) == (ps.sharding_spec is None)
                if ps.sharding_spec is not None:
                    assert back.sharding_spec.shards == ps.sharding_spec.shards


def _every_field_sharding() -> "ParameterSharding":
    """A ParameterSharding with every field (and every field of its nested settings) away from
    its default, so that a field the plan file drops shows up in the round trip."""
    from fbgemm_gpu.tbe.cache.cache_config import CacheAlgorithm, MultiPassPrefetchConfig
    from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode
    from fbgemm_gpu.tbe.monitoring.runtime_monitor import TBEStatsReporterConfig
    from fbgemm_gpu.tbe.ssd.ssd_config import EnrichmentPolicy, EnrichmentResponseFormat, KVZCHTBEConfig
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import CacheParams, KeyValueParams, ParameterSharding
    from torchrec.types import DataType

    kvzch_defaults = KVZCHTBEConfig._field_defaults
    kvzch = KVZCHTBEConfig(
        kvzch_eviction_trigger_mode=kvzch_defaults["kvzch_eviction_trigger_mode"] + 1,
        eviction_free_mem_threshold_gb=7,
        eviction_free_mem_check_interval_batch=9,
        threshold_calculation_bucket_stride=0.5,
        threshold_calculation_bucket_num=11,
        load_ckpt_without_opt=True,
        optimizer_type_for_st="adam",
        optimizer_state_dtypes_for_st=frozenset({("momentum1", 1), ("momentum2", 2)}),
        enrichment_policy=EnrichmentPolicy(
            response_format=EnrichmentResponseFormat.THRIFT_INT64, provider_name="p", fs_timeout_ms=12
        ),
    )
    assert all(getattr(kvzch, f) != d for f, d in kvzch_defaults.items())
    return ParameterSharding(
        sharding_type="column_wise",
        compute_kernel="fused_uvm_caching",
        ranks=[1, 0],
        sharding_spec=EnumerableShardingSpec(
            [
                ShardMetadata(shard_offsets=[0, 0], shard_sizes=[10, 8], placement="rank:1/cuda:1"),
                ShardMetadata(shard_offsets=[0, 8], shard_sizes=[10, 8], placement="rank:0/cuda:0"),
            ]
        ),
        cache_params=CacheParams(
            algorithm=CacheAlgorithm.LFU,
            load_factor=0.25,
            reserved_memory=1.5,
            precision=DataType.FP16,
            prefetch_pipeline=True,
            stats=None,
            multipass_prefetch_config=MultiPassPrefetchConfig(num_passes=3, min_splitable_pass_size=17),
        ),
        enforce_hbm=True,
        stochastic_rounding=False,
        bounds_check_mode=BoundsCheckMode.FATAL,
        output_dtype=DataType.BF16,
        key_value_params=KeyValueParams(
            ssd_storage_directory="/ssd@local_rank",
            ssd_rocksdb_write_buffer_size=64,
            ssd_rocksdb_shards=4,
            gather_ssd_cache_stats=True,
            stats_reporter_config=TBEStatsReporterConfig(interval=5),
            use_passed_in_path=False,
            l2_cache_size=2,
            max_l1_cache_size=3,
            enable_async_update=True,
            bulk_init_chunk_size=100,
            lazy_bulk_init_enabled=True,
            enable_raw_embedding_streaming=True,
            res_store_shards=2,
            kvzch_tbe_config=kvzch,
            load_ckpt_without_opt=True,
            ps_hosts=(("::1", 2000), ("::1", 2001)),
            ps_client_thread_num=3,
            ps_max_key_per_request=8,
            ps_max_local_index_length=9,
        ),
    )


def test_plan_json_round_trips_every_parameter_sharding_field(tmp_path: Path) -> None:
    import dataclasses

    from torchrec.distributed.types import (
        CacheParams,
        EmbeddingModuleShardingPlan,
        KeyValueParams,
        ParameterSharding,
        ShardingPlan,
    )

    ps = _every_field_sharding()
    # A field TorchRec adds later is at its default here: fail until the sample (and, if its type
    # is new, the codec in plan_io) covers it.
    for cls, value, skip in [
        (ParameterSharding, ps, set()),
        (CacheParams, ps.cache_params, {"stats"}),
        (KeyValueParams, ps.key_value_params, set()),
    ]:
        for field in dataclasses.fields(cls):
            if field.name in skip:
                continue
            default = field.default if field.default is not dataclasses.MISSING else None
            assert getattr(value, field.name) != default, (
                f"{cls.__name__}.{field.name} is not set in the round-trip sample: a field this test "
                "does not know; set it here and check that plan_io stores it"
            )
    plan = ShardingPlan(plan={"model.ebc": EmbeddingModuleShardingPlan({"t": ps})})
    path = tmp_path / "plan.json"
    save_plan(path, plan, {"world_size": 2})
    loaded, data = load_plan(path)
    back = loaded.plan["model.ebc"]["t"]
    for field in dataclasses.fields(ParameterSharding):
        assert getattr(back, field.name) == getattr(ps, field.name), field.name
    assert data["plan"]["model.ebc"]["t"]["cache_params"]["load_factor"] == 0.25  # readable JSON
    assert data["plan"]["model.ebc"]["t"]["bounds_check_mode"] == "FATAL"


def test_plan_file_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

    from mlet_dist.planning.plan_io import PlanMismatchError

    path = tmp_path / "plan.json"
    save_plan(path, ShardingPlan(plan={"m": EmbeddingModuleShardingPlan({"t": _every_field_sharding()})}), {})
    data = json.loads(path.read_text())
    data["plan"]["m"]["t"]["new_knob"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(PlanMismatchError, match=r"unknown fields \['new_knob'\]"):
        load_plan(path)


def test_sample_plan_fits_the_train_py_model(sample_dir: Path) -> None:
    """The 1x2 CPU plan for the shipped sample is accepted against train.py's own model, for
    owner-side and after-comm projections; the committed sample plan still fits the sample."""
    spec = load_table_spec(sample_dir)
    cluster = cluster_spec("1x2", "cpu", ddr_gb=4)
    for after_comm in (False, True):
        result = plan_tables(
            PlanRequest(spec=spec, cluster=cluster, inner_dim=K, embedding_dim=D, owner_projection=not after_comm)
        )
        (path,) = result.plan.plan
        assert path.endswith(".wide") == after_comm
        model = train_model(sample_dir, ["--projection-after-comm"] if after_comm else [])
        check_plan_fits(result.plan, model, 2, "cpu", cluster.as_dict())
    committed, data = load_plan(PLANS / "criteo_sample_1x2_cpu.json")
    check_plan_fits(committed, train_model(sample_dir), 2, "cpu", data["topology"], "committed sample plan")


def test_dcnv2_plan_fits_the_train_py_dcnv2_model(sample_dir: Path, tmp_path: Path) -> None:
    """mlet-plan --arch dcnv2 plans the DCN-v2 model train.py builds for --arch dcnv2."""
    out = tmp_path / "dcn.json"
    assert (
        main(
            [
                "--spec",
                str(sample_dir),
                "--world",
                "1x2",
                "--device",
                "cpu",
                "--ddr-gb",
                "4",
                "-k",
                str(K),
                "-d",
                str(D),
                "--arch",
                "dcnv2",
                "--dcn-layers",
                "2",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    plan, data = load_plan(out)
    model = train_model(sample_dir, ["--arch", "dcnv2", "--dcn-layers", "2"])
    assert type(model.model).__name__ != "DLRM"
    check_plan_fits(plan, model, 2, "cpu", data["topology"], "dcnv2 plan")


# --- estimates -------------------------------------------------------------------------------


def totals(result: PlanResult) -> Dict[str, int]:
    return estimates(result)["totals"]


def test_optimizer_state_bytes_follow_the_fused_optimizer() -> None:
    rows = sum(SMALL.values())
    by_opt = {
        opt: totals(plan_small(sharding="table_wise", embedding_optimizer=opt))
        for opt in ("sgd", "rowwise_adagrad", "adagrad")
    }
    assert by_opt["sgd"]["optimizer_bytes"] == 0
    assert by_opt["rowwise_adagrad"]["optimizer_bytes"] == rows * FP32  # one float per row
    # and two more with fbgemm's CPU loop (training/optim.py), on CPU only
    loop = totals(plan_small(sharding="table_wise", cpu_table_update="loop"))
    assert loop["optimizer_bytes"] == rows * FP32 * 3
    assert loop["table_shard_bytes"] - by_opt["rowwise_adagrad"]["table_shard_bytes"] == rows * FP32 * 2
    gpu = totals(
        plan_small(sharding="table_wise", cpu_table_update="loop", cluster=cluster_spec("1x2", "cuda", hbm_gb=1))
    )
    assert gpu["optimizer_bytes"] == rows * FP32  # CUDA runs fbgemm's plain rowwise kernel
    assert by_opt["adagrad"]["optimizer_bytes"] == rows * K * FP32  # one float per weight
    for opt in by_opt.values():  # the difference reaches the planner's per-shard storage
        assert opt["weights_bytes"] == rows * K * FP32
        assert opt["table_shard_bytes"] - opt["optimizer_bytes"] == by_opt["sgd"]["table_shard_bytes"]


def test_projection_bytes_per_shard_holder() -> None:
    tables, w = len(SMALL), K * D * FP32
    adam = 2 + 2  # weight + grad + 2 Adam states
    assert totals(plan_small(sharding="table_wise"))["projection_bytes"] == tables * w * adam
    assert totals(plan_small(sharding="table_wise", dense_optimizer="sgd"))["projection_bytes"] == tables * w * 2
    # row-wise and data-parallel: every rank of the group holds all of W
    assert totals(plan_small(sharding="row_wise"))["projection_bytes"] == 2 * tables * w * adam
    assert totals(plan_small(sharding="data_parallel"))["projection_bytes"] == 2 * tables * w * adam
    # column-wise: each shard holds the rows of W for its columns, W once in total
    cw = plan_small(sharding="column_wise", cw_shard_dim=16)
    assert all(len(o.shards) == K // 16 for o in cw.options)
    assert totals(cw)["projection_bytes"] == tables * w * adam
    # after the all-to-all: dense DDP params on every rank (in TorchRec's dense reservation)
    after = plan_small(sharding="table_wise", owner_projection=False)
    assert totals(after)["projection_bytes"] == 0
    assert totals(after)["dense_projection_bytes_per_rank"] == tables * w * adam
    assert after.dense_reserved_bytes > plan_small(sharding="table_wise").dense_reserved_bytes


def test_cpu_rank_totals_count_the_measured_process_overhead() -> None:
    """A CPU rank's peak RSS holds the process itself (libraries, input pipeline, activations:
    ~0.58 GB measured at batch 2048, ~0.47 GB at 256) beside its tables; without it the plan said
    1.26 GB where a rank peaked at 3.0 GB (issue 26). On a GPU that memory is host RAM, so HBM
    totals leave it out."""
    assert 0.55e9 < process_overhead_bytes(2048) < 0.62e9 and 0.44e9 < process_overhead_bytes(256) < 0.5e9
    for batch in (256, 2048):
        cpu = estimates(plan_small(sharding="table_wise", batch_size=batch))["per_rank"]
        for r in cpu:
            assert r["process_overhead"] == process_overhead_bytes(batch)
            assert r["training_total"] == r["tables_total"] + r["reserved_dense_and_inputs"] + r["process_overhead"]
    gpu = estimates(plan_small(sharding="table_wise", cluster=cluster_spec("1x2", "cuda", hbm_gb=1)))["per_rank"]
    assert all(
        "process_overhead" not in r and r["training_total"] == r["tables_total"] + r["reserved_dense_and_inputs"]
        for r in gpu
    )


def test_mlet_vs_baseline_training_and_serving_bytes() -> None:
    rows = sum(SMALL.values())
    mlet, base = totals(plan_small(sharding="table_wise")), totals(plan_small(sharding="table_wise", mlet=False))
    assert mlet["weights_bytes"] == rows * K * FP32 and base["weights_bytes"] == rows * D * FP32
    assert base["projection_bytes"] == 0
    assert mlet["table_shard_bytes"] > base["table_shard_bytes"] * (K / D) * 0.9
    assert mlet["serving_bytes"] == base["serving_bytes"] == rows * D * FP32


@pytest.mark.parametrize(
    "sharding,extra",
    [("table_wise", {}), ("row_wise", {}), ("table_row_wise", {}), ("column_wise", {"cw_shard_dim": 16}), ("auto", {})],
)
def test_serving_footprint_is_n_d_4(sharding: str, extra: dict) -> None:
    est = estimates(plan_small(sharding=sharding, **extra))
    assert est["totals"]["serving_bytes"] == sum(SMALL.values()) * D * FP32
    for name, table in est["tables"].items():
        assert table["serving_bytes"] == SMALL[name[2:]] * D * FP32
    if sharding != "auto":  # no data-parallel replicas: the ranks' shares add up exactly
        assert sum(r["serving"] for r in est["per_rank"]) == est["totals"]["serving_bytes"]


def test_owner_projection_sends_d_wide_outputs() -> None:
    owner = plan_small(sharding="table_wise", cluster=cluster_spec("1x2", "cuda", hbm_gb=8))
    after = plan_small(sharding="table_wise", cluster=cluster_spec("1x2", "cuda", hbm_gb=8), owner_projection=False)
    for a, b in zip(owner.options, after.options):
        pa, pb = a.shards[0].perf, b.shards[0].perf
        assert pa.fwd_comms == pytest.approx(pb.fwd_comms * D / K)
        assert pa.bwd_comms == pytest.approx(pb.bwd_comms * D / K)
        assert pa.fwd_compute > pb.fwd_compute  # the owner's projection matmul


def test_constraints_respect_the_mlet_sharder() -> None:
    one_node = PlanRequest(small_spec(), cluster_spec("1x8", "cuda", hbm_gb=80))
    two_nodes = PlanRequest(small_spec(), cluster_spec("2x8", "cuda", hbm_gb=80))
    types = lambda r: table_constraints(r)["t_C1"].sharding_types  # noqa: E731
    assert "table_row_wise" in types(one_node) and "table_row_wise" not in types(two_nodes)
    assert "column_wise" not in types(one_node)  # k=64 < 2 x 128: a single shard, i.e. table-wise
    assert "column_wise" in types(PlanRequest(small_spec(), one_node.cluster, cw_shard_dim=16))
    assert "table_row_wise" in types(PlanRequest(small_spec(), two_nodes.cluster, owner_projection=False))
    with pytest.raises(ValueError, match="table_row_wise"):
        PlanRequest(small_spec(), two_nodes.cluster, sharding="table_row_wise")


def test_enumeration_order_does_not_depend_on_string_hashing() -> None:
    request = PlanRequest(small_spec(), cluster_spec("1x8", "cuda", hbm_gb=80))
    enumerator = OrderedEnumerator(
        topology=request.cluster.topology(), batch_size=8, constraints=table_constraints(request)
    )
    allowed = ["data_parallel", "table_wise", "column_wise", "row_wise", "table_row_wise"]
    assert enumerator._filter_sharding_types("t_C1", allowed) == [
        "data_parallel",
        "table_wise",
        "row_wise",
        "table_row_wise",
    ]


# --- does not fit ----------------------------------------------------------------------------


def test_plan_that_does_not_fit_names_the_shortfall(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    terabyte = load_table_spec(SPECS / "criteo_terabyte.json")
    with pytest.raises(PlanDoesNotFitError, match=r"need at least [\d.,]+ GiB .* short by [\d.,]+ GiB"):
        plan_tables(PlanRequest(terabyte, cluster_spec("1x2", "cuda", hbm_gb=80)))
    with pytest.raises(PlanDoesNotFitError, match=r"table t_C1 .* short by [\d.,]+ GiB per device"):
        plan_tables(PlanRequest(terabyte, cluster_spec("1x8", "cuda", hbm_gb=16), sharding="table_wise"))
    out = tmp_path / "x.json"
    code = main(["--spec", str(SPECS / "criteo_terabyte.json"), "--world", "1x2", "--hbm-gb", "80", "-o", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("mlet-plan: error: the tables need at least") and "short by" in err


# --- the committed plans ---------------------------------------------------------------------


def test_terabyte_64x8_plans_in_seconds() -> None:
    request = PlanRequest(load_table_spec(SPECS / "criteo_terabyte.json"), cluster_spec("64x8", "cuda", hbm_gb=80))
    start = time.perf_counter()
    result = plan_tables(request)
    seconds = time.perf_counter() - start
    print(f"\nplanned Criteo Terabyte (882M rows, k=64) for 64x8 H100 in {seconds:.1f} s")
    assert seconds < 120
    est = estimates(result)
    assert len(est["tables"]) == 26 and len(est["per_rank"]) == 512
    assert max(r["tables_total"] for r in est["per_rank"]) <= min(result.usable_bytes)
    committed = json.loads((PLANS / "criteo_terabyte_64x8_h100.json").read_text())
    assert plan_to_dict(result.plan, {})["plan"] == committed["plan"]


def _committed_commands() -> List[Path]:
    return sorted(p for p in PLANS.glob("*.json") if "64x8" not in p.name)


@pytest.mark.parametrize("path", _committed_commands(), ids=lambda p: p.stem)
def test_mlet_plan_reproduces_the_committed_plans(path: Path, tmp_path: Path, sample_dir: Path) -> None:
    committed = json.loads(path.read_text())
    argv = shlex.split(committed["made_by"]["command"])[1:]
    out = argv.index("--out") + 1
    argv[out] = str(tmp_path / path.name)
    spec = argv.index("--spec") + 1
    if not (ROOT / argv[spec]).exists():  # the sample plan: prepared here from the shipped sample
        argv[spec] = str(sample_dir)
    else:
        argv[spec] = str(ROOT / argv[spec])
    assert main([*argv, "--quiet"]) == 0
    fresh = json.loads((tmp_path / path.name).read_text())
    for key in ("plan", "topology", "estimates"):
        assert fresh[key] == committed[key], f"{path.name}: {key} differs; re-run: {committed['made_by']['command']}"
    plan, data = load_plan(path)
    model = build_planning_model(
        PlanRequest(load_table_spec(argv[spec]), cluster_spec("1x1", "cpu"), inner_dim=K, embedding_dim=D)
    )
    check_plan_fits(
        plan, model, data["topology"]["world_size"], data["topology"]["compute_device"], data["topology"], path.name
    )


def test_plan_from_a_runs_config_equals_the_flags(tmp_path: Path) -> None:
    """mlet-plan --config RUN/config.json plans the model that run trains (issue 14: CLIs build
    their model from a saved config), and a model flag given beside it is a conflict."""
    from mlet_dist.config_io import save_config
    from mlet_dist.training.config import parse_args

    spec = SPECS / "criteo_kaggle.json"
    shape = ["-k", "32", "-d", "8", "--batch-size", "512", "--embedding-optimizer", "sgd"]
    save_config(tmp_path / "config.json", parse_args(["--data", str(spec), *shape]))
    common = ["--world", "2x8", "--hbm-gb", "80", "-q"]
    assert main(["--config", str(tmp_path / "config.json"), *common, "-o", str(tmp_path / "a.json")]) == 0
    assert main(["--spec", str(spec), *shape, *common, "-o", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["plan"] == b["plan"]
    assert main(["--spec", str(spec), "-k", "64", *common, "-o", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["plan"] != a["plan"]  # k matters: the check can fail
    assert main(["--config", str(tmp_path / "config.json"), "-k", "64", *common, "-o", str(tmp_path / "d.json")]) == 2


def test_a_cpu_plan_leaves_the_rank_process_its_own_memory() -> None:
    """A CPU rank's ~0.43 GiB of libraries, input and activations (process_overhead_bytes at batch 256)
    is not memory the tables may take: at 0.44 GiB per rank the small tables (~7 MB with their
    optimizer state) fit the cap but not what the process leaves, and the error says so."""
    with pytest.raises(PlanDoesNotFitError, match=r"the rank process's own 0\.4\d GiB"):
        plan_small(cluster=cluster_spec("1x2", "cpu", ddr_gb=0.44))
    plan_small(cluster=cluster_spec("1x2", "cpu", ddr_gb=0.6))  # room for both: plans

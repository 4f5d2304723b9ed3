"""The CUDA path, checked on a GPU (``make gpu-check`` runs these; on CPU they skip, saying why).

- MLET forward / backward and collapse on the GPU equal the CPU within 1e-5 (the unsharded module:
  torch's embedding-bag CUDA kernel and cuBLAS with TF32 off).
- The sharded path on 1 nccl rank: fbgemm's CUDA TBE kernels with fused rowwise Adagrad under the
  MLET sharder (projection on the owner) + Adam for the dense part, 6 steps, equal the one-process
  CPU reference of tests/equivalence_setup.py (update within 1e-3 of its size, as on gloo).
- ``mlet_dist/train.py --backend nccl`` on 1 rank under torchrun: train -> collapse -> serving
  dir, then ``mlet-predict --device cuda`` in fp32 and int8 on the collapsed model.

This file is also the torchrun worker of the sharded check (``python -m torch.distributed.run
tests/test_cuda.py --worker OUT``), so the test and its worker cannot drift apart.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not CUDA,
        reason=f"needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
        "run `make gpu-check` on a GPU machine",
    ),
]
TOL = 1e-5
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"


def _mlet_pair():  # type: ignore[no-untyped-def]
    """The same MLET collection on CPU and on the GPU, and one batch with empty and repeated bags."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from mlet_dist import MLETEmbeddingBagCollection, MLETTableConfig

    torch.manual_seed(0)
    tables = [
        MLETTableConfig(f"t{i}", num_embeddings=n, inner_dim=64, embedding_dim=16, feature_names=[f"f{i}"])
        for i, n in enumerate([1000, 37, 50_000])
    ]
    cpu = MLETEmbeddingBagCollection(tables, device=torch.device("cpu"))
    gpu = MLETEmbeddingBagCollection(tables, device=torch.device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = 512
    lengths = torch.randint(0, 4, (3 * batch,), generator=g, dtype=torch.int32)
    bounds = [t.num_embeddings for t in tables]
    values = torch.cat(
        [torch.randint(0, bounds[i], (int(lengths[i * batch : (i + 1) * batch].sum()),), generator=g) for i in range(3)]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=[f"f{i}" for i in range(3)], values=values, lengths=lengths)
    return cpu, gpu, kjt


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    """fp32 on both sides: TF32 matmuls would differ from the CPU by ~1e-3."""
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def test_mlet_forward_backward_on_gpu_equals_cpu() -> None:
    cpu, gpu, kjt = _mlet_pair()
    out_cpu = cpu(kjt).values()
    out_gpu = gpu(kjt.to(torch.device("cuda"))).values()
    assert out_gpu.is_cuda and out_gpu.shape == out_cpu.shape == (512, 3 * 16)
    assert (out_gpu.cpu() - out_cpu).abs().max().item() <= TOL
    weight = torch.randn(out_cpu.shape, generator=torch.Generator().manual_seed(2))
    (out_cpu * weight).sum().backward()
    (out_gpu * weight.cuda()).sum().backward()
    grads_cpu = {n: p.grad for n, p in cpu.named_parameters()}
    for name, p in gpu.named_parameters():
        assert p.grad is not None and grads_cpu[name] is not None, name
        assert (p.grad.cpu() - grads_cpu[name]).abs().max().item() <= TOL, name


def test_collapse_on_gpu_equals_cpu_and_the_trained_output() -> None:
    from mlet_dist import collapse

    cpu, gpu, kjt = _mlet_pair()
    served_cpu, served_gpu = collapse(cpu, chunk_rows=4096), collapse(gpu, chunk_rows=4096)
    for name, bag in served_gpu.embedding_bags.items():
        assert bag.weight.is_cuda
        assert (bag.weight.cpu() - served_cpu.embedding_bags[name].weight).abs().max().item() <= TOL, name
    with torch.no_grad():
        trained = gpu(kjt.to(torch.device("cuda"))).values()
        served = served_gpu(kjt.to(torch.device("cuda"))).values()
    assert (served - trained).abs().max().item() <= TOL


def _sharded_worker(out: Path) -> None:
    """Under torchrun, 1 nccl rank: train the equivalence model sharded table-wise (fused rowwise
    Adagrad on fbgemm's CUDA TBE, Adam dense), write the gathered state (rank 0)."""
    import equivalence_setup as setup
    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection
    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    quiet_library_logs()
    torch.backends.cuda.matmul.allow_tf32 = False
    env = init_distributed("nccl")
    o = setup.OPTIMS["rowwise_adagrad+adam"]
    optim = OptimConfig(
        embedding_optimizer=o.embedding,
        embedding_lr=o.embedding_lr,
        dense_optimizer=o.dense,
        dense_lr=o.dense_lr,
        eps=o.eps,
    )
    model = setup.build_model(torch.device("meta"), mlet=True)
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    sharded = shard_model(model, env, ShardingConfig("table_wise"))
    load_full_state_dict(sharded, setup.initial_state(True))
    optimizer = build_optimizer(sharded, optim)
    for step in range(setup.STEPS):
        optimizer.zero_grad()
        loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size).to(env.device))
        loss.backward()
        optimizer.step()
    state = {k: v.detach().cpu() for k, v in gather_full_state_dict(sharded).items()}
    kernels = sorted({ps.compute_kernel for plan in sharded.plan.plan.values() for ps in plan.values()})
    owner_side = any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules())
    if env.is_main:
        torch.save(
            {
                "state": state,
                "owner_side": owner_side,
                "kernels": kernels,
                "device": str(env.device),
                "backend": env.backend,
            },
            out,
        )
    shutdown_distributed()


def _torchrun(args: list, timeout: int = 300) -> subprocess.CompletedProcess:
    """1 rank under torchrun. Unlike tests/dist_launch.py, PYTHONPATH keeps what it held: on a GPU
    image the triplet lives in a --target folder named there (docs/gpu.md)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return proc


def test_sharded_nccl_rank_fused_tbe_matches_cpu_reference(tmp_path: Path) -> None:
    import equivalence_setup as setup

    out = tmp_path / "sharded.pt"
    _torchrun([Path(__file__), "--worker", out])
    result = torch.load(out, weights_only=True)
    assert result["owner_side"] and result["backend"] == "nccl" and result["device"].startswith("cuda")
    assert result["kernels"] == ["fused"], result["kernels"]
    ref_state, _ = setup.reference_run(world_size=1, mlet=True, optim=setup.OPTIMS["rowwise_adagrad+adam"])
    errors = setup.update_errors(result["state"], ref_state, setup.initial_state(True))
    for name, (rel, size) in errors.items():
        assert size > 1e-4, f"{name} barely moved in the reference (|Δ| {size})"
        assert rel <= setup.UPDATE_REL_TOL, f"{name}: update differs by {rel:.2e} of its size {size:.2e}"


def test_train_collapse_predict_on_one_nccl_rank(tmp_path: Path) -> None:
    from data_prep.criteo import prepare_criteo_kaggle

    data, run_dir = tmp_path / "criteo", tmp_path / "run"
    prepare_criteo_kaggle(SAMPLE, data)
    _torchrun(
        [
            ROOT / "mlet_dist" / "train.py",
            "--data",
            data,
            "--run-dir",
            run_dir,
            "--backend",
            "nccl",
            "--model",
            "mlet",
            "--inner-dim",
            "64",
            "--embedding-dim",
            "16",
            "--sharding",
            "table_wise",
            "--batch-size",
            "128",
            "--max-train-batches",
            "8",
            "--max-eval-batches",
            "3",
            "--no-progress",
            "--no-resume",
        ],
        timeout=400,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "nccl" and summary["world_size"] == 1
    assert summary["collapsed_max_abs_prediction_diff"] <= TOL
    serving = run_dir / "serving"
    assert (serving / "manifest.json").is_file()
    reports = {}
    for precision in ("fp32", "int8"):
        metrics = tmp_path / f"{precision}.json"
        cmd = [
            sys.executable,
            "-m",
            "mlet_dist.serving.predict_cli",
            "--serving",
            str(serving),
            "--data",
            str(data),
            "--out",
            str(tmp_path / f"{precision}.parquet"),
            "--device",
            "cuda",
            "--precision",
            precision,
            "--batch-size",
            "128",
            "--max-batches",
            "3",
            "--no-progress",
            "--metrics-out",
            str(metrics),
            *(["--compare"] if precision == "int8" else []),
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        reports[precision] = json.loads(metrics.read_text())
    fp32, int8 = reports["fp32"], reports["int8"]
    assert fp32["rows"] == int8["rows"] == summary["collapsed"]["test"]["rows"] == 3 * 128
    # the same first 3 x 128 test rows: the served fp32 model scores them as train.py's collapsed
    # evaluation did
    assert abs(fp32["metrics"]["auc"] - summary["collapsed"]["test"]["auc"]) <= 1e-4
    assert int8["vs_fp32"]["max_abs_prob_diff"] <= 1e-2  # int8 rows: small, not zero
    assert int8["table_bytes"] < int8["fp32_table_bytes"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _sharded_worker(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: torchrun --nproc-per-node 1 tests/test_cuda.py --worker OUT.pt")

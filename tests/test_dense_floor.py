"""benchmarks/bench_dense_floor.py times the dense part of the default DLRM alone (issue 29's floor
under any step at the authors' configuration): its module must compute what mlet-train's default
model computes from the same pooled embeddings, and hold that model's dense parameters only, or the
floor is of some other model."""

from typing import List

import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from benchmarks import bench_dense_floor as bench
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm

D, B = 16, 8


def _default_model() -> DLRM:
    tables: List[EmbeddingBagConfig] = [
        EmbeddingBagConfig(name=f"t{i}", num_embeddings=10, embedding_dim=D, feature_names=[f"f{i}"])
        for i in range(bench.NUM_TABLES)
    ]
    return build_dlrm(EmbeddingBagCollection(tables=tables), DLRMConfig())


def test_the_floor_module_computes_the_models_logits() -> None:
    torch.manual_seed(0)
    model = _default_model()
    floor = bench.DenseStep(model)
    dense = torch.rand(B, 13)
    ids = torch.randint(0, 10, (bench.NUM_TABLES * B,))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(bench.NUM_TABLES)],
        values=ids,
        lengths=torch.ones(bench.NUM_TABLES * B, dtype=torch.long),
    )
    pooled = model.sparse_arch(kjt)  # [B, tables, d]
    assert torch.allclose(floor(dense, pooled), model(dense, kjt).squeeze(-1), rtol=0, atol=1e-6)


def test_the_benchmark_times_the_default_models_dense_parameters() -> None:
    timed = [(n, p.shape) for n, p in bench.default_dense_step(D).named_parameters()]
    dense = [(n, p.shape) for n, p in _default_model().named_parameters() if not n.startswith("sparse_arch.")]
    assert timed == dense and timed


def test_the_benchmark_runs_both_optimizers() -> None:
    medians = bench.run(batch=16, d=D, threads=1, steps=2, warmup=1, rounds=1)
    assert set(medians) == {"sgd", "adam"} and all(ms > 0 for ms in medians.values())

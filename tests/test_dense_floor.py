"""benchmarks/bench_dense_floor.py times the dense part of the default DLRM alone (issue 29's floor
under any step at the authors' configuration): its module must compute what mlet-train's default
model computes from the same pooled embeddings, or the floor is of some other model."""

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from benchmarks import bench_dense_floor as bench
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm

D, B = 16, 8


def test_the_floor_module_is_the_default_models_dense_part() -> None:
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name=f"t{i}", num_embeddings=10, embedding_dim=D, feature_names=[f"f{i}"])
        for i in range(bench.NUM_TABLES)
    ]
    model = build_dlrm(EmbeddingBagCollection(tables=tables), DLRMConfig())
    floor = bench.DenseStep(DLRMConfig(), D)
    missing = floor.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k.startswith(("dense_arch.", "over_arch."))}, strict=True
    )
    assert not missing.missing_keys and not missing.unexpected_keys
    dense = torch.rand(B, 13)
    ids = torch.randint(0, 10, (bench.NUM_TABLES * B,))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(bench.NUM_TABLES)],
        values=ids,
        lengths=torch.ones(bench.NUM_TABLES * B, dtype=torch.long),
    )
    pooled = model.sparse_arch(kjt)  # [B, tables, d]
    assert torch.allclose(floor(dense, pooled), model(dense, kjt).squeeze(-1), rtol=0, atol=1e-6)


def test_the_benchmark_runs_both_optimizers() -> None:
    medians = bench.run(batch=16, d=D, threads=1, steps=2, warmup=1, rounds=1)
    assert set(medians) == {"sgd", "adam"} and all(ms > 0 for ms in medians.values())

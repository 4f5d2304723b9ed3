"""--bottom-mlp-output (issue 28): the bottom MLP's d-wide last layer without TorchRec's ReLU.

At small d every one of the d ReLU units can die, and then no gradient reaches the bottom MLP
and the dense features are gone for good (the slow MLET runs at d <= 4 had an all-zero bottom
output from step 10). These tests pin the mechanism, the TorchRec internals the switch relies
on, and that runs saved before the switch existed are rebuilt as they were trained (ReLU).
"""

import json
from pathlib import Path

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.config_io import load_config, save_config
from mlet_dist.models import DLRMConfig, build_dlrm
from mlet_dist.models.dcn import DCNConfig, build_dcnv2
from mlet_dist.models.ranking import ModelConfig

D = 2


def _collection() -> EmbeddingBagCollection:
    tables = [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=10, feature_names=[f"f{i}"]) for i in range(3)
    ]
    return EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))


def _dlrm(output: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_dlrm(
        _collection(), DLRMConfig(dense_in_features=5, bottom_mlp=[8], top_mlp=[4, 1], bottom_mlp_output=output)
    )


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    return model.dense_arch.model._mlp[-1]._linear


def test_default_is_linear_and_relu_is_torchrecs_dense_arch() -> None:
    assert DLRMConfig().bottom_mlp_output == "linear"
    x = torch.randn(64, 5)
    for output in ("linear", "relu"):
        model = _dlrm(output)
        pre = _last_linear(model)(model.dense_arch.model._mlp[0](x))
        got = model.dense_arch(x)
        expected = pre if output == "linear" else torch.relu(pre)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (_dlrm("linear").dense_arch(x) < 0).any()  # no ReLU: the output takes either sign


def test_dead_last_layer_cuts_the_dense_features_off_only_under_relu() -> None:
    """All d units pushed negative for every input (what the slow runs reached): under the ReLU
    no gradient reaches the bottom MLP at all; without it the dense features keep learning."""
    x = torch.randn(64, 5)
    grads = {}
    for output in ("relu", "linear"):
        model = _dlrm(output)
        with torch.no_grad():
            _last_linear(model).bias.fill_(-100.0)
        model.dense_arch(x).sum().backward()
        grads[output] = model.dense_arch.model._mlp[0]._linear.weight.grad.abs().sum().item()
    assert grads["relu"] == 0.0
    assert grads["linear"] > 0.0


def test_dcnv2_takes_the_same_switch() -> None:
    torch.manual_seed(0)
    for output, can_be_negative in (("linear", True), ("relu", False)):
        model = build_dcnv2(
            _collection(),
            DLRMConfig(dense_in_features=5, bottom_mlp=[8], top_mlp=[4, 1], bottom_mlp_output=output),
            DCNConfig(cross_layers=1),
        )
        assert bool((model.dense_arch(torch.randn(64, 5)) < 0).any()) is can_be_negative


def test_a_config_saved_before_the_switch_rebuilds_the_relu_it_was_trained_with(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save_config(path, ModelConfig())
    assert json.loads(path.read_text())["dlrm"]["bottom_mlp_output"] == "linear"
    assert load_config(ModelConfig, path).dlrm.bottom_mlp_output == "linear"
    old = json.loads(path.read_text())
    del old["dlrm"]["bottom_mlp_output"]  # as every config.json written before issue 28's fix
    path.write_text(json.dumps(old))
    assert load_config(ModelConfig, path).dlrm.bottom_mlp_output == "relu"


def test_unknown_output_is_refused() -> None:
    with pytest.raises(ValueError, match="--bottom-mlp-output must be one of linear, relu"):
        DLRMConfig(bottom_mlp_output="gelu")


def _old_run(tmp_path: Path, with_config_json: bool) -> tuple:
    """A run dir as a run before the switch left it: a checkpoint, its argv, and (optionally) a
    config.json without ``bottom_mlp_output``."""
    from mlet_dist.training.config import parse_args

    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    run = tmp_path / "run"
    (run / "checkpoints" / "step-3").mkdir(parents=True)
    argv = ["--data", str(data), "--run-dir", str(run), "-k", "32", "-d", "4"]
    (run / "metrics.jsonl").write_text(json.dumps({"event": "config", "argv": argv}) + "\n")
    if with_config_json:
        save_config(run / "config.json", parse_args(argv))
        old = json.loads((run / "config.json").read_text())
        del old["dlrm"]["bottom_mlp_output"]
        (run / "config.json").write_text(json.dumps(old))
    return data, run, argv


@pytest.mark.parametrize("with_config_json", [True, False])
def test_resuming_a_relu_run_with_the_new_default_is_refused(tmp_path: Path, with_config_json: bool) -> None:
    """Its argv replayed says today's default (linear); the checkpoint was trained with the ReLU."""
    from mlet_dist.training.config import parse_args
    from mlet_dist.training.resume_check import check_resume_matches

    _, _, argv = _old_run(tmp_path, with_config_json)
    with pytest.raises(SystemExit, match="differs in --bottom-mlp-output"):
        check_resume_matches(parse_args(argv))
    check_resume_matches(parse_args([*argv, "--bottom-mlp-output", "relu"]))  # the model it was: resumes


def test_collapsing_a_run_older_than_config_json_is_refused(tmp_path: Path) -> None:
    """mlet-collapse rebuilds only from config.json (issue 30): no argv replay to patch the ReLU into."""
    from mlet_dist.serving import collapse_cli

    _, run, _ = _old_run(tmp_path, with_config_json=False)
    with pytest.raises(ValueError, match="has no config.json"):
        collapse_cli.run_model(run, None)
    (tmp_path / "newer").mkdir()
    _, run, _ = _old_run(tmp_path / "newer", with_config_json=True)  # config.json without the key: the ReLU
    assert collapse_cli.run_model(run, None).model.dlrm.bottom_mlp_output == "relu"

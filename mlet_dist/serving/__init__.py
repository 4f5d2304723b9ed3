"""Serving: two products, named apart.

The serving directory (``mlet-collapse``, and train.py after an MLET run): the collapsed d-wide
model as a stock TorchRec checkpoint with a manifest, scored by ``mlet-predict``.
    write_serving_dir / write_run_serving_dir   trained (sharded) model -> serving directory (serving_dir_writer)
    load_serving_model                          serving directory -> DLRMTrain in this process
    load_serving_sharded                        serving directory -> DMP over the process group
    open_serving_dir                            check a serving directory (manifest, sha256, keys)
    collapse_cli, predict_cli, scoring, raw_input   mlet-collapse; mlet-predict and its inputs

The deploy artifact (``mlet-export``, export_cli), modules named export_*:
    export_artifact.export_artifact / open_artifact / load_predict_module   serving dir -> checked artifact
    export_predict_module   TorchRec PredictModule with dict inputs; fp16/int8 via quantize_inference_model; scripting
    export_weights          the collapsed weights as one safetensors file (no pickle)

Shared by both: model (ServingModelConfig: the stock model rebuilt from JSON), quantize (fp16 / int8
tables for mlet-predict --precision and the artifact's modules), contract (feature order, dense
transform, OOV id: contract.json, and mlet-predict's raw-input checks).
"""

from mlet_dist.serving.serving_dir_writer import (
    WrittenServingDir,
    write_run_serving_dir,
    write_serving_dir,
)
from mlet_dist.serving.load import load_serving_model, load_serving_sharded
from mlet_dist.serving.manifest import ServingDir, ServingDirError, open_serving_dir
from mlet_dist.serving.model import (
    ServingModelConfig,
    ServingTopology,
    TableSpec,
    build_serving_model,
    plan_serving,
)
from mlet_dist.serving.quantize import quantize_serving_model

__all__ = [
    "ServingDir",
    "ServingDirError",
    "WrittenServingDir",
    "ServingModelConfig",
    "ServingTopology",
    "TableSpec",
    "build_serving_model",
    "write_run_serving_dir",
    "write_serving_dir",
    "load_serving_model",
    "load_serving_sharded",
    "open_serving_dir",
    "plan_serving",
    "quantize_serving_model",
]

"""Serving: the collapsed d-wide model as a stock TorchRec model on disk, and scoring with it.

    export_serving / export_after_training   trained (sharded) model -> serving directory
    load_serving_model                       serving directory -> DLRMTrain in this process
    load_serving_sharded                     serving directory -> DMP over the process group
    open_serving_dir                         check a serving directory (manifest, sha256, keys)
    quantize_serving_model                   fp16 / int8 tables via TorchRec's quantized EBC

Deployment (``mlet-export``, export_cli), imported from their modules:
    artifact.export_artifact / open_artifact / load_predict_module   serving dir -> checked artifact
    predict_module     TorchRec PredictModule with dict inputs; fp16/int8 via quantize_inference_model; scripting
    contract           contract.json: feature order, dense transform, OOV id
    safetensors_io     the collapsed weights as one safetensors file (no pickle)
    sharded_quant      shard_quant_model over N ranks (table-wise), weights moved from the unsharded TBEs

CLIs: ``mlet-collapse`` (collapse_cli), ``mlet-predict`` (predict_cli), ``mlet-export`` (export_cli).
"""

from mlet_dist.serving.export import ServingExport, export_after_training, export_serving
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
    "ServingExport",
    "ServingModelConfig",
    "ServingTopology",
    "TableSpec",
    "build_serving_model",
    "export_after_training",
    "export_serving",
    "load_serving_model",
    "load_serving_sharded",
    "open_serving_dir",
    "plan_serving",
    "quantize_serving_model",
]

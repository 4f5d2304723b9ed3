"""Criteo Kaggle train.txt -> prepared parquet dataset (kept for its import path).

The implementation is the shared streaming pipeline (data_prep/pipeline.py) with
the Criteo schema (data_prep/criteo.py); see FORMAT.md for the output.
"""

from data_prep.criteo import prepare_criteo_kaggle
from data_prep.pipeline import PrepConfig, PrepResult, Reject
from data_prep.pipeline import chunk_split_bounds as split_bounds

__all__ = ["PrepConfig", "PrepResult", "Reject", "prepare_criteo_kaggle", "split_bounds"]

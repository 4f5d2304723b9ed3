"""Offline dataset preparation (raw logs -> parquet dataset directory; see FORMAT.md).

Deliberately torch-free: it runs on data-prep machines with only pyarrow + numpy.
"""

from data_prep.criteo_kaggle import PrepConfig, PrepResult, Reject, prepare_criteo_kaggle, split_bounds
from data_prep.dataset_format import FORMAT_VERSION, META_FILE, read_meta

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "PrepConfig",
    "PrepResult",
    "Reject",
    "prepare_criteo_kaggle",
    "read_meta",
    "split_bounds",
]

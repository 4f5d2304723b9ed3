"""Offline dataset preparation (raw logs -> parquet dataset directory; see FORMAT.md).

Deliberately torch-free: it runs on data-prep machines with only pyarrow + numpy.
"""

from data_prep.avazu import prepare_avazu
from data_prep.criteo import prepare_criteo_kaggle, prepare_criteo_terabyte
from data_prep.dataset_format import FORMAT_VERSION, META_FILE, read_meta
from data_prep.spec import PrepConfig, PrepResult, Reject
from data_prep.splits import chunk_split_bounds as split_bounds

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "PrepConfig",
    "PrepResult",
    "Reject",
    "prepare_avazu",
    "prepare_criteo_kaggle",
    "prepare_criteo_terabyte",
    "read_meta",
    "split_bounds",
]

"""Training-side data loading (torch). Dataset preparation lives in the torch-free data_prep package."""

from mlet_dist.data.parquet_batches import DatasetMeta, LoadedBatch, ParquetBatchStream

__all__ = ["DatasetMeta", "LoadedBatch", "ParquetBatchStream"]

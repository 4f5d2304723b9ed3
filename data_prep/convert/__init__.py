"""Converters of datasets other tools prepared (TorchRec .npy days, NVTabular parquet, MLPerf multi-hot
.npz, the reference DLRM's .npz / .bin) into the format: their ids are copied, not counted, so they
share common.py's checks and writer instead of the raw driver (data_prep/parallel)."""

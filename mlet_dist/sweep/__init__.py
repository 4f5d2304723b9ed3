"""Accuracy sweeps: baseline vs MLET (DLRM and DCN-v2) over d, k and seeds, and their report.

    mlet-sweep --config configs/sweep_tiny_planted.yaml          # run what is missing, then report
    mlet-sweep --config CONFIG --report-only                     # report from the finished runs

`config` reads the sweep file and expands the grid; `runner` launches each run as its own
torchrun job (resumable: a run dir with summary.json is done), or `torchx_runner` submits it as a
torchx app (launch.scheduler: local_cwd, slurm, kubernetes); `rare_items` buckets test
examples by the train frequency of their ids; `report` writes the tables and plots.
"""

"""The preparation driver of raw inputs: tasks over byte ranges of whole blocks (driver.py: the passes
and their in-order merge; tasks.py: what a worker does with one range; ranges.py: where ranges are cut;
engine.py: where tasks run: threads of the calling process for one worker, worker processes, or Dask)."""

"""Generated datasets: synthetic Criteo-schema data at any table scale (``synthetic``) and the planted
benchmark with a known Bayes-optimal AUC (``planted``)."""

"""``metarun-report``: compare finished runs from their run directories (no wandb needed).

runs.py finds the runs and reads them, table.py ranks them by a metric, plots.py draws learning curves,
cli.py is the command.
"""

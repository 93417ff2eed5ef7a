"""Task mapping: how a per-task function runs over a meta-batch (vmap, loop, threads) and auto's remembered choice."""

"""The run: the command line, the outer loop (train), evaluation, the run directory and the checkpoint format."""

"""The parts of ``scripts/bench.py``, which is the entry point and says what is measured and how: the settings
and their synthetic meta-batches (``settings``), each setting's algorithm as a run composes it (``algorithms``), the
networks every implementation starts from (``networks``), metarun's implementations (``metarun_impls``), the plain
PyTorch loops (``plain``: the algorithms with an inner loop; ``plain_metric``: the others), one module per peer
package (``learn2learn``, ``higher``, ``torchopt``), the line-up of a setting's implementations
(``implementations``, on the records of ``impl``), the FLOP counts and the device's peak (``flops``), the timing
and peak memory (``measure``), and the extras: the evaluation's timing (``evaluation``) and the GPU-busy fraction
(``gpu_busy``). Named benchkit, not bench, so that it does not shadow the script."""

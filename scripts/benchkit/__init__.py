"""The parts of ``scripts/bench.py``, which is the entry point and says what is measured and how: the settings
and their synthetic meta-batches (``settings``), the networks every implementation starts from (``networks``),
metarun's implementations (``metarun_impls``), one module per peer (``plain``, ``learn2learn``, ``higher``,
``torchopt``), the line-up of a setting's implementations (``implementations``, on the records of ``impl``) and
the timing and peak memory (``measure``). Named benchkit, not bench, so that it does not shadow the script."""

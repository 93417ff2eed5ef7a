"""metarun: config-driven meta-learning experiment runner."""

from metarun.allocator import use_huge_pages

__version__ = "0.1.0"
# here, before any of metarun's modules imports torch: torch reads the setting at its first CPU allocation
use_huge_pages()


def __getattr__(name: str):
    """``metarun.load_learner``, imported on first use so that the CLI starts without loading torch."""
    if name == "load_learner":
        from metarun.learner import load_learner

        return load_learner
    raise AttributeError(f"module 'metarun' has no attribute {name!r}")

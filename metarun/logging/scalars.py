"""What the trackers that plot series (TensorBoard, MLflow) share: numbers only, the final results once."""

from numbers import Real


def is_number(value) -> bool:
    """Whether ``value`` is a real number, as a tracker plots it (not a per-step curve, text, flag or null)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def numbers(metrics: dict) -> dict:
    """The real-valued entries of ``metrics`` as floats; per-step curves, text and flags are left out."""
    return {k: float(v) for k, v in metrics.items() if is_number(v)}


class ScalarSeries:
    """A logger that hands numbers to ``write(step, values)``; ``write_results`` puts the final results at the run's
    last iteration, less those the last step already logged with the same value (the last validation is both)."""

    def __init__(self):
        """Nothing logged yet."""
        self.last = {}

    def log(self, step: int, metrics: dict) -> None:
        """Write the numbers of ``metrics`` at ``step``."""
        self.last = numbers(metrics)
        self.write(step, self.last)

    def write_results(self, results: dict) -> None:
        """Write the numbers of ``results`` that are new at its last iteration."""
        final = {k: v for k, v in numbers(results).items() if self.last.get(k) != v}
        self.write(results["iterations"], final)

    def write(self, step: int, values: dict) -> None:
        """Record ``values`` (name → float) at ``step``."""
        raise NotImplementedError

"""Runs on disk: a run directory holds ``.hydra/``, ``metrics.jsonl`` and, once finished, ``results.json``."""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from metarun.utils.errors import first_line


@dataclass
class Run:
    """One run directory read back: its command-line overrides, final results and logged metrics."""

    path: Path
    overrides: dict
    results: dict | None  # None while running or when the run failed
    history: list = field(repr=False)  # the metrics.jsonl rows

    def value(self, key: str):
        """``key`` as set for this run: a command-line override, a config-group choice or a config value."""
        if key in self.overrides:
            return self.overrides[key]
        choices = OmegaConf.select(self._hydra_file("hydra.yaml"), "hydra.runtime.choices", default={})
        if key in choices:
            return choices[key]
        value = OmegaConf.select(self._hydra_file("config.yaml"), key)
        if value is None:
            raise ValueError(f"{key} is neither an override nor a config key of run {self.path}; "
                             f"pick one of {', '.join(self.overrides) or 'algo, dataset, ...'}")
        return str(value)

    def dataset(self) -> str:
        """The dataset's name: results.json's, else the run config's (a run still going), else "unknown"."""
        if self.results and "dataset" in self.results:
            return str(self.results["dataset"])
        return str(OmegaConf.select(self._hydra_file("config.yaml"), "dataset.name", default="unknown"))

    def _hydra_file(self, name: str):
        # a run copied without its .hydra/ (or written by another tool) reads as an empty config
        path = self.path / ".hydra" / name
        return OmegaConf.load(path) if path.is_file() else OmegaConf.create()


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (it has a metrics.jsonl or a results.json)."""
    return (path / "metrics.jsonl").is_file() or (path / "results.json").is_file()


def find_runs(paths: list) -> list:
    """Every run in ``paths`` (run directories, or sweep directories searched recursively), in path order.

    Raises:
        FileNotFoundError: when a path does not exist or holds no run.
    """
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass a run directory or a sweep directory")
        found = [path] if is_run_dir(path) else sorted(
            {p.parent for p in [*path.rglob("metrics.jsonl"), *path.rglob("results.json")]}, key=_job_order)
        if not found:
            raise FileNotFoundError(f"{path} holds no runs (no metrics.jsonl or results.json below it); "
                                    "pass a run or sweep directory under outputs/")
        runs.extend(run for run in map(read_run, found) if run is not None)
    if not runs:
        raise ValueError(f"no readable run in {', '.join(map(str, paths))} (see the warnings above)")
    return runs


def read_run(path: Path) -> Run | None:
    """Read the run in directory ``path``; None, with a warning naming the file, when one of its files cannot
    be read (a metrics.jsonl line that is not JSON, e.g. one a kill cut short, is skipped with a warning)."""
    overrides_file, results_file, metrics_file = path / ".hydra" / "overrides.yaml", path / "results.json", path / "metrics.jsonl"
    current = overrides_file
    try:
        items = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        # "+key=value" adds and "key=value" sets: both are the run's value of key; "~key" deletions carry none
        overrides = dict(item.lstrip("+").split("=", 1) for item in items if "=" in item)
        current = results_file
        results = json.loads(results_file.read_text()) if results_file.is_file() else None
        current = metrics_file
        lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    except Exception as err:  # unreadable, not UTF-8, not JSON or YAML: the same fix, whatever the parser raised
        warn(f"skipped the run {path}: cannot read {current} ({err.__class__.__name__}: {first_line(err)})")
        return None
    history = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            history.append(json.loads(line))
        except ValueError:
            warn(f"skipped line {number} of {metrics_file}: not valid JSON")
    return Run(path, overrides, results, history)


def warn(message: str) -> None:
    """A warning on stderr: the report goes on with what it can read."""
    print(f"metarun-report: warning: {message}", file=sys.stderr)


def _job_order(path: Path) -> tuple:
    # Hydra names sweep jobs "<job number>_<overrides>": job 10 sorts after job 9
    number = path.name.split("_", 1)[0]
    return (str(path.parent), int(number) if number.isdigit() else -1, path.name)

"""Fixtures of the tracker tests: a package made to look uninstalled, and one MLflow store for the session."""

import sys

import pytest


@pytest.fixture
def without(monkeypatch):
    """``without(package)`` makes ``import package`` fail as if it were not installed, for this test."""
    def block(package):
        monkeypatch.setitem(sys.modules, package, None)
        # modules already imported from it would be found in sys.modules instead: forget them for the test
        stale = (f"{package}.", f"metarun.logging.{package}", f"torch.utils.{package}")
        for name in [name for name in sys.modules if name.startswith(stale)]:
            monkeypatch.delitem(sys.modules, name)
    return block


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A SQLite tracking URI shared by the session's tests: creating the tables takes seconds, so once."""
    from mlflow.tracking import MlflowClient

    from metarun.logging.mlflow import experiment_id

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment_id(MlflowClient(uri), "metarun", db)
    return uri

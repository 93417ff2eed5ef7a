"""The notebook API: ``metarun.run`` as the command runs a job, its ``Results``, ``metarun.report.load_runs`` and the
documentation's notebook, executed."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import metarun
from metarun.api import unused
from metarun.logging import console
from metarun.report import load_runs
from metarun.utils.errors import PREFIX
from tests.conftest import REPO, TINY, run_cli

LOGGED = ["train.log_every=5"]  # rows at steps 5, 10, 15, 20 of debug=default's 20


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """MAML and first-order MAML run by ``metarun.run`` one after the other in this process, in the default run
    directories of a fresh working folder, with the process state read before and after."""
    folder = tmp_path_factory.mktemp("working")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("METARUN_CACHE", str(folder / "cache"))
        threads, progress = torch.get_num_threads(), console.progress_shown()
        torch.set_num_threads(3)  # not the one thread the run's small model takes
        console.show_progress(True)  # as a notebook starts; the runs turn it off (logger.console=false)
        try:
            runs = [metarun.run([*TINY, *LOGGED, f"algo={algo}"]) for algo in ("maml", "fomaml")]
            state = dict(threads=torch.get_num_threads(), progress=console.progress_shown(),
                         hydra=GlobalHydra.instance().is_initialized(), hydra_config=HydraConfig.initialized())
        finally:
            torch.set_num_threads(threads)
            console.show_progress(progress)
    return SimpleNamespace(folder=folder, runs=runs, state=state)


def test_results_are_the_run_directorys_results_and_metrics_rows(two_runs):
    maml = two_runs.runs[0]
    assert maml.run_dir.parent == two_runs.folder / "outputs" / "runs"
    # named as the command names it: the date, then the sorted overrides
    assert maml.run_dir.name.endswith("_algo=maml,debug=default,hardware.num_threads=1,logger.console=false,"
                                      "train.log_every=5")
    assert maml.metrics == json.loads((maml.run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (maml.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert maml.history == rows and [row["step"] for row in rows] == [5, 10, 15, 20]
    assert (maml.run_dir / ".hydra" / "overrides.yaml").is_file()  # the record the command writes
    score = f"test/mse = {maml.metrics['test/mse']:.4g} ± {maml.metrics['test/mse_ci95']:.2g} (10 episodes)"
    assert repr(maml) == f"Results(maml on sinusoid: {score} → {maml.run_dir})"


def test_a_second_call_in_the_same_process_runs_its_own_job(two_runs):
    maml, fomaml = two_runs.runs
    assert fomaml.metrics["algo"] == "fomaml" and fomaml.run_dir != maml.run_dir
    assert [row["step"] for row in fomaml.history] == [5, 10, 15, 20]


def test_run_leaves_threads_progress_and_hydra_as_it_found_them(two_runs):
    assert two_runs.state == dict(threads=3, progress=True, hydra=False, hydra_config=False)


def test_a_default_run_directory_taken_in_the_same_second_gets_a_number(tmp_path):
    taken = tmp_path / "2026-01-01_10-00-00_algo=maml"
    assert unused(taken) == taken
    taken.mkdir()
    (tmp_path / f"{taken.name}~2").mkdir()
    assert unused(taken) == tmp_path / f"{taken.name}~3"


def test_a_misspelt_key_raises_the_commands_line(tmp_path, monkeypatch):
    command = run_cli("algo.inner_lrr=1", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        metarun.run(["algo.inner_lrr=1"])
    assert command.returncode == 1 and command.stderr == f"{PREFIX}{raised.value}\n"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no Hydra traceback under it
    assert not (tmp_path / "outputs").exists()


def test_a_key_added_with_plus_is_refused_and_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^algo.inner_lrr is not a config key; did you mean algo.inner_lr\?"):
        metarun.run(["+algo.inner_lrr=1", *TINY])
    assert not (tmp_path / "outputs" / "runs").exists()


def test_a_flag_or_one_string_is_refused():
    with pytest.raises(ValueError, match="^-m: metarun.run takes overrides"):
        metarun.run(["-m", "algo=maml,fomaml"])
    with pytest.raises(TypeError, match="list of key=value strings"):
        metarun.run("algo=maml debug=default")


def test_mode_eval_re_evaluates_a_checkpoint(two_runs, tmp_path):
    fomaml = two_runs.runs[1]
    checkpoint = fomaml.run_dir / "checkpoints" / "best.pt"
    # quoted: the run directory's name holds = and ,
    scored = metarun.run(["mode=eval", f"checkpoint='{checkpoint}'", "logger.console=false"], output_dir=tmp_path / "eval")
    assert scored.run_dir == tmp_path / "eval" and scored.metrics["algo"] == "fomaml"
    assert scored.metrics["test/mse"] == pytest.approx(fomaml.metrics["test/mse"])  # the same fixed episodes


def test_load_runs_gives_a_row_per_run_with_its_overrides_and_results(two_runs):
    # in folder-name order: the date to the second, then the overrides (two runs of one second: fomaml first)
    rows = sorted(load_runs(two_runs.folder / "outputs" / "runs"), key=lambda row: row["algo"], reverse=True)
    assert [row["algo"] for row in rows] == ["maml", "fomaml"]
    for row, results in zip(rows, two_runs.runs):
        assert row["path"] == str(results.run_dir) and row["run"] == results.run_dir.name
        assert {key: row[key] for key in ("debug", "train.log_every", "logger.console")} == \
            {"debug": "default", "train.log_every": "5", "logger.console": "false"}
        assert row["test/mse"] == results.metrics["test/mse"] and row["dataset"] == "sinusoid"
        assert not any(isinstance(value, (list, dict)) for value in row.values())  # scalars only


def test_frames_name_pandas_where_it_is_missing(two_runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas then fails
    with pytest.raises(ImportError, match="pip install pandas"):
        two_runs.runs[0].history_frame()
    with pytest.raises(ImportError, match="pip install pandas"):
        load_runs(two_runs.folder / "outputs" / "runs", as_frame=True)


def test_frames_with_pandas(two_runs):
    pytest.importorskip("pandas", reason="pandas is not installed (an optional dependency of the notebook API)")
    maml = two_runs.runs[0]
    assert maml.history_frame()["step"].tolist() == [5, 10, 15, 20]
    table = load_runs(two_runs.folder / "outputs" / "runs", as_frame=True)
    assert table["algo"].tolist() == ["maml", "fomaml"] and table["test/mse"][0] == maml.metrics["test/mse"]


def test_the_documentation_notebook_runs_top_to_bottom(tmp_path):
    for module in ("nbclient", "nbformat", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is not installed (the dev extra has it): the notebook needs it")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "docs" / "notebook.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells), "docs/notebook.ipynb keeps outputs: clear them"
    # its runs go to the working folder's outputs/, here tmp_path
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 2
    plotted = [output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(plotted) == 1

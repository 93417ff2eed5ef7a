"""The README and the documentation pages (docs/*.md): CI runs the README's set-up and test commands verbatim, and
every command they show is run as a user types it in a fresh clone (from the repository root, a small budget added,
the outputs in a temporary folder): here, or by the test that RUN_BY names, or NOT_RUN says why it cannot be."""

import ast
import io
import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from metarun.utils import hardware
from tests.conftest import REPO, compose_config, run_cli
from tests.data.imagetrees import write_tree, zip_tree

DOCS = REPO / "docs"
SHARED_OMNIGLOT = REPO / ".." / "shared" / "data" / "omniglot"  # where the docs' Omniglot commands read the subsets
SMALL = ["train.iterations=20", "train.log_every=10", "train.val_every=10", "train.checkpoint_every=10",
         "eval.episodes=10", "eval.val_episodes=10", "logger.console=false"]
OMNIGLOT_SMALL = ["model.width=16", "dataset.queries=2", "eval.queries=2", "hardware.num_threads=1"]


def _pages() -> list:
    """README.md and every page of the site."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _page(name: str) -> str:
    """The text of docs/``name``.md."""
    return (DOCS / f"{name}.md").read_text()


def _section(title: str, page: str = None) -> str:
    """The text under the heading ``title`` (any level) up to the next heading of the same or a higher level: the one
    such heading of README.md and the docs pages, or of ``page`` (``README`` or a docs page's name)."""
    found = []
    for path in _pages() if page is None else [REPO / "README.md" if page == "README" else DOCS / f"{page}.md"]:
        text = path.read_text()
        match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
        if match:
            rest = text[match.end():]
            end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
            found.append(rest[: end.start()] if end else rest)
    (section,) = found
    return section


def _blocks(text: str) -> list:
    """(language, body) of each fenced block of ``text``, in order; an untagged block's language is ""."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _shell_lines(text: str) -> list:
    """The lines of ``text``'s fenced blocks without a language (the shell commands), as typed."""
    return [line for language, body in _blocks(text) if not language for line in body.splitlines() if line]


def _fenced_commands(section: str, page: str = None) -> list:
    """The shell command lines of the section titled ``section`` (of ``page``, see _section)."""
    return _shell_lines(_section(section, page))


TABLE_COMMAND = re.compile(r"\| `(metarun(?: [^`]*)?)` (?=\|)")  # a table cell that is one metarun command


def _table_commands(section: str) -> list:
    """The ``metarun ...`` commands of the section's tables (a row's first cell)."""
    return re.findall(TABLE_COMMAND, _section(section))


def _dataset_commands() -> dict:
    """{dataset name: the arguments of the Datasets page's command for it}."""
    commands = [shlex.split(line)[1:] for line in _shell_lines(_page("datasets"))]
    return {next(a[len("dataset="):] for a in args if a.startswith("dataset=")): args for args in commands}


def _doc_commands() -> list:
    """(page, command) for every command README.md and the docs pages show: each shell line of their fenced blocks
    (a trailing ``# comment`` dropped) and each table cell that is a ``metarun ...`` command."""
    return [(page.name, re.sub(r"\s+#.*$", "", command)) for page in _pages() for text in [page.read_text()]
            for command in _shell_lines(text) + TABLE_COMMAND.findall(text)]


def _args(command: str) -> list:
    """The arguments of a ``metarun ...`` line, split as a shell would (a trailing ``# comment`` dropped)."""
    return shlex.split(command, comments=True)[1:]


# A command's key (the command itself, else a part only it has) → the test that runs it, "file::function", or for
# CI's own two lines ".ci/run::verbatim" and for the wheel's "scripts/check_wheel.sh::<what in it runs the command>".
# This file's tests run each command as a user types it from the repository root, SMALL added.
HERE = "tests/test_readme.py::"
PLAIN = HERE + "test_every_plain_command_runs"
TOUR = HERE + "test_the_readme_tour_runs_on_sinusoid"
QUICK = HERE + "test_the_quick_runs_their_paired_comparison_and_the_inference_example_run"
RESUME = HERE + "test_the_retest_resume_and_train_longer_commands_run"
CHALLENGE = HERE + "test_the_challenge_commands_run_on_the_real_subsets"
COMPLETION = "tests/test_package.py::test_shell_completion_installs_for_bash_and_completes_a_group"
RUN_BY = {
    # README and Quick start
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[cpu,dev]" && metarun': ".ci/run::verbatim",
    ". .venv/bin/activate && python -m pytest -q -n auto --durations=15": ".ci/run::verbatim",
    "metarun algo=fomaml dataset.shots=10 seed=1": TOUR,
    "hydra.sweep.dir=outputs/tour": TOUR,
    "metarun-report outputs/tour": TOUR,
    "metarun experiment=omniglot_challenge_5alphabets dataset.root=../shared/data/omniglot debug=default "
    "hydra.run.dir=outputs/challenge": HERE + "test_the_readme_tours_preset_and_load_learner_run_on_the_real_subsets",
    "mkdocs build --strict": "tests/test_docs.py::test_the_site_builds_strictly_with_the_generated_schema_tables",
    "python scripts/check_docs_browser.py": "tests/test_docs.py::test_the_browser_check_opens_the_built_site",
    "metarun": PLAIN,
    "metarun algo=maml dataset=sinusoid": PLAIN,
    "metarun algo=fomaml": PLAIN,
    "metarun experiment=maml_sinusoid_10shot": PLAIN,
    "metarun algo.inner_lr=0.05 train.iterations=20000 seed=3": PLAIN,
    "metarun -m algo=maml,fomaml seed=0,1,2": PLAIN,
    "metarun experiment=maml_sinusoid_10shot debug=default": PLAIN,
    "metarun debug=quick": PLAIN,
    "metarun hardware.num_threads=1 hardware.keep_freed_memory=false": PLAIN,
    "metarun --help": PLAIN,
    "metarun --cfg job": PLAIN,
    "metarun experiment=metasgd_sinusoid_5shot": PLAIN,
    "metarun mode=eval checkpoint=outputs/runs/<run>": RESUME,
    "metarun <same overrides as the run> hydra.run.dir": RESUME,
    "<same overrides as the run> train.iterations=20000": RESUME,
    # Datasets, Omniglot's challenge
    "metarun algo=fomaml dataset=omniglot": HERE + "test_the_omniglot_command_runs_on_the_real_subsets",
    "dataset=metadataset": "tests/data/test_metadataset.py::"
                           "test_a_multi_source_run_trains_on_every_source_and_reports_each_test_source",
    "dataset=imagefolder": HERE + "test_the_imagefolder_command_runs_on_folders_it_names",
    "metarun experiment=omniglot_challenge_5alphabets dataset.root=../shared/data/omniglot": CHALLENGE,
    "metarun experiment=omniglot_challenge_5alphabets dataset.root=../shared/data/omniglot "
    "dataset.strokes.files=[strokes_background_small1.zip]": CHALLENGE,
    "metarun mode=eval checkpoint=outputs/runs/<run>/checkpoints/best.pt eval.support_copies=4": CHALLENGE,
    "metarun experiment=omniglot_challenge_5alphabets_wide dataset.root=../shared/data/omniglot": CHALLENGE,
    "hydra.sweep.dir=outputs/challenge": CHALLENGE,
    "eval.ensemble=[outputs/challenge": CHALLENGE,
    "metarun -m experiment=omniglot_challenge_5alphabets_gpu dataset.root=../shared/data/omniglot seed=0,1,2,3,4,5,6,7 "
    "hydra/launcher=local hardware.jobs_per_gpu=4 hydra.sweep.dir=outputs/challenge_gpu 'hydra.sweep.subdir=seed${seed}'":
        CHALLENGE,
    # Sweeps, launchers and trackers (tests/test_compare_runs_doc.py lists the same)
    "metarun -m algo=maml,fomaml dataset.shots=5,10": "tests/report/test_report.py::sweep",
    "metarun-report outputs/multirun": "tests/report/test_report.py::"
                                       "test_report_ranks_runs_writes_table_files_and_plots_grouped_curves",
    "hydra.run.dir=outputs/quick/maml": QUICK,
    "hydra.run.dir=outputs/quick/protonet": QUICK,
    "metarun-report --paired": QUICK,
    "hydra/sweeper=optuna_tpe": "tests/test_sweep.py::"
                                "test_optuna_preset_minimises_the_validation_metric_the_run_returns",
    "hydra/launcher=local": "tests/test_sweep.py::"
                            "test_submitit_local_launcher_runs_each_job_in_its_own_process_and_directory",
    "hydra/launcher=slurm": "tests/test_sweep.py::test_slurm_command_composes_with_the_partition_and_requeue",
    "logger=wandb": "tests/logging/test_wandb.py::test_sweep_with_wandb_logs_config_metrics_summary_and_identity",
    # the other pages
    "metarun 'hydra.searchpath=[file://conf]' algo=my_algo":
        "tests/test_examples.py::test_the_readmes_train_with_the_command_tested_here",
    "torchrun --nproc_per_node=2": "tests/test_distributed.py::"
                                   "test_ddp_run_matches_the_single_process_run_and_only_rank_0_writes",
    "python scripts/omniglot_subsets.py": "tests/scripts/test_omniglot_subsets.py::"
                                          "test_a_cell_trains_within_its_budget_and_lands_in_the_table",
    "scripts/gpu_check.sh --device cpu --quick":
        "tests/scripts/test_gpu_check.py::test_the_readme_dry_run_writes_the_report",
    # Install: scripts/check_wheel.sh, which .ci/run runs
    "python -m build": "scripts/check_wheel.sh::-m build",
    "python3 -m venv ~/metarun-env": "scripts/check_wheel.sh::-m venv",
    'whl[cpu]"': "scripts/check_wheel.sh::[cpu]",
    "metarun --version": "tests/test_package.py::"
                         "test_version_prints_the_package_version_without_composing_a_config_or_loading_torch",
    "metarun debug=default": "scripts/check_wheel.sh::debug=default",
    "metarun --shell-completion install=bash": COMPLETION,
    'eval "$(metarun --shell-completion': COMPLETION,
}
NOT_RUN = {
    "mkdocs serve": "a server that runs until stopped; mkdocs build --strict builds the same pages",
    "wandb sync": "uploads to a wandb server (no account or network here); test_wandb checks the offline runs it reads",
    "python scripts/bench.py --threads 1 --learn2learn": "a 22-minute measurement; tests/scripts/test_bench.py runs "
                                                        "every setting and implementation with --quick",
    "python scripts/bench.py --threads all": "an 18-minute measurement; tests/scripts/test_bench.py runs the script "
                                             "with --quick",
    "python scripts/bench.py --device cuda": "needs a GPU (scripts/gpu_check.sh runs it on one)",
    "THP_MEM_ALLOC_ENABLE=0 python scripts/bench.py": "a measurement without huge pages; tests/scripts/test_bench.py "
                                                      "runs the script with --quick",
    "scripts/gpu_wheels.sh": "downloads wheels from PyPI for an air-gapped node",
    "scripts/gpu_check.sh --wheels": "on a GPU node; the dry run (--device cpu) runs the same script",
    'whl[report]"': "the GPU machine's install of the wheel; scripts/check_wheel.sh installs the same wheel",
    "torch.cuda.is_available()": "asks torch whether it sees a GPU; nothing of metarun's",
    "metarun experiment=": "a paper preset runs for hours, and most read data not here (miniImageNet, tieredImageNet, "
                           "CIFAR-100, CUB, Meta-Dataset, Omniglot's full sets); tests/test_config.py composes and "
                           "checks every one, and the sinusoid presets and Omniglot's challenge run shortened here",
}


def _markers(command: str) -> list:
    """The RUN_BY or NOT_RUN keys that stand for ``command``: the command itself, else each key it contains that is
    not itself a command the pages show (``metarun`` stands for the bare command only); one, when all is well."""
    keys = [*RUN_BY, *NOT_RUN]
    if command in keys:
        return [command]
    shown = {command for _, command in _doc_commands()}
    return [key for key in keys if key not in shown and key in command]


def test_ci_runs_the_readme_set_up_and_test_commands_verbatim():
    install, test = _fenced_commands("Set up", "README")[:2]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
    assert "pip install -e \".[cpu,dev]\"" in install and install.endswith("&& metarun")
    assert "pytest" in test
    assert (install, test) == tuple(_shell_lines(_page("quickstart"))[:2])  # the quick start repeats them


def test_every_command_the_docs_show_is_run_by_a_test_or_says_why_not():
    commands = _doc_commands()
    unclaimed = [f"{page}: {command} (keys: {_markers(command)})" for page, command in commands
                 if len(_markers(command)) != 1]
    assert not unclaimed, ("give each one key in RUN_BY (the test that runs it) or NOT_RUN (why none can):\n"
                           + "\n".join(unclaimed))
    used = {key for _, command in commands for key in _markers(command)}
    assert used == set(RUN_BY) | set(NOT_RUN), f"keys no page shows any more: {set(RUN_BY) | set(NOT_RUN) - used}"
    for where in set(RUN_BY.values()):
        path, name = where.split("::")
        text = (REPO / path).read_text()
        if path.endswith(".py"):
            assert re.search(rf"^def {name}\(", text, re.M), f"{path} has no {name}"
        else:
            assert name == "verbatim" or name in text, f"{path} does not run {name}"


def _plain_commands() -> list:
    """The commands test_every_plain_command_runs runs: generated data, no placeholders."""
    return sorted({command for _, command in _doc_commands()
                   if [RUN_BY.get(key) for key in _markers(command)] == [PLAIN]})


@pytest.mark.parametrize("command", _plain_commands())
def test_every_plain_command_runs(command, tmp_path):
    args = _args(command)
    informational = "--help" in args or "--cfg" in args
    extra = [] if informational else [*SMALL, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    out = run_cli(*args, *extra, cwd=REPO)
    assert out.returncode == 0, out.stderr
    if "-m" in args:
        jobs = 1
        for arg in args:
            jobs *= len(arg.split("=", 1)[1].split(",")) if "=" in arg else 1
        assert len(list((tmp_path / "sweep").glob("*/results.json"))) == jobs
    elif not informational:
        assert (tmp_path / "run" / "results.json").is_file()


def test_the_retest_resume_and_train_longer_commands_run(tmp_path):
    retest, resume, longer = _table_commands("Evaluation, re-testing and resuming")
    run_dir = tmp_path / "outputs" / "runs" / "first"
    first = ["algo=fomaml", *SMALL]  # the run's own overrides, which resuming repeats
    assert run_cli(*first, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0

    def typed(command: str) -> list:
        command = command.replace("<same overrides as the run>", shlex.join(first))
        return _args(command.replace("outputs/runs/<run>", str(run_dir)))

    out = run_cli(*typed(retest), "eval.episodes=20", f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["test/episodes"] == 20
    out = run_cli(*typed(resume), cwd=tmp_path)  # finished: nothing left to train, tested again
    assert out.returncode == 0, out.stderr
    out = run_cli(*typed(longer), "train.iterations=30", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((run_dir / "results.json").read_text())["iterations"] == 30


def test_the_readme_tour_runs_on_sinusoid(tmp_path):
    run, sweep, report = [_args(line) for line in _fenced_commands("A ten-line tour")[:3]]
    out = run_cli(*run, *SMALL, f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert out.returncode == 0, out.stderr
    sweep = [arg.replace("outputs/tour", f"{tmp_path}/tour") for arg in sweep]
    out = run_cli(*sweep, *SMALL, cwd=REPO)
    assert out.returncode == 0, out.stderr
    report = [arg.replace("outputs/tour", f"{tmp_path}/tour") for arg in report]
    out = subprocess.run([sys.executable, "-m", "metarun.report.cli", *report, "--no-plot"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "fomaml" in out.stdout and (tmp_path / "tour" / "report.md").is_file()


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory) -> Path:
    """One cache folder for this module's runs on the real subsets (each dataset setting is decoded once)."""
    if not SHARED_OMNIGLOT.is_dir():
        pytest.skip(f"the real Omniglot subsets are not in {SHARED_OMNIGLOT}, where the docs' commands read them")
    return tmp_path_factory.mktemp("omniglot-cache")


def _omniglot_images(count: int, shots: int) -> tuple:
    """(support images, their labels, query images) of ``count`` characters of images_background_small2.zip."""
    archive = zipfile.ZipFile(SHARED_OMNIGLOT / "images_background_small2.zip")
    by_class = {}
    for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
        by_class.setdefault(name.rsplit("/", 1)[0], []).append(name)
    classes = sorted(by_class)[:count]
    read = lambda name: Image.open(io.BytesIO(archive.read(name)))  # noqa: E731
    support = [read(by_class[c][i]) for c in classes for i in range(shots)]
    query = [read(by_class[c][shots]) for c in classes]
    return support, [c.split("/")[-1] for c in classes for _ in range(shots)], query


def test_the_readme_tours_preset_and_load_learner_run_on_the_real_subsets(omniglot_cache, tmp_path):
    preset = [arg.replace("outputs/challenge", f"{tmp_path}/challenge")
              for arg in _args(_fenced_commands("A ten-line tour")[3])]
    out = run_cli(*preset, "model.width=16", "dataset.queries=1", "hardware.num_threads=1", "logger.console=false",
                  f"dataset.cache_dir={omniglot_cache}", cwd=REPO)
    assert out.returncode == 0, out.stderr
    (python,) = [body for language, body in _blocks(_section("A ten-line tour")) if language == "python"]
    support_images, support_labels, query_images = _omniglot_images(5, 1)
    code = python.replace("outputs/challenge", f"{tmp_path}/challenge")
    namespace = {"support_images": support_images, "support_labels": support_labels, "query_images": query_images}
    exec(compile(code, "README.md (the tour)", "exec"), namespace)
    assert namespace["adapted"].predict(query_images)[0] in support_labels


def test_the_omniglot_command_runs_on_the_real_subsets(omniglot_cache, tmp_path):
    out = run_cli(*_dataset_commands()["omniglot"], *SMALL, *OMNIGLOT_SMALL, f"dataset.cache_dir={omniglot_cache}",
                  f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "omniglot"


def test_the_challenge_commands_run_on_the_real_subsets(omniglot_cache, tmp_path):
    preset, strokes, support_copies, wide, *sweeps = _shell_lines(_page("omniglot_challenge"))
    if not (SHARED_OMNIGLOT / "strokes_background_small1.zip").exists():
        pytest.skip(f"strokes_background_small1.zip is not in {SHARED_OMNIGLOT}")
    small = [*SMALL, "train.max_minutes=null", "model.width=16", "dataset.queries=1", "hardware.num_threads=1",
             f"dataset.cache_dir={omniglot_cache}"]
    for name, command in (("run", preset), ("strokes", strokes), ("wide", wide)):
        out = run_cli(*_args(command), *small, f"hydra.run.dir={tmp_path}/{name}", cwd=REPO)
        assert out.returncode == 0, out.stderr
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["dataset"] == "omniglot" and results["test/episodes"] == 10
    assert json.loads((tmp_path / "wide" / "results.json").read_text())["hardware/precision"] == \
        hardware.precision(compose_config(["hardware.precision=auto"]).hardware, torch.device("cpu"), "protonet")
    retest = [arg.replace("outputs/runs/<run>", str(tmp_path / "run")) for arg in _args(support_copies)]
    out = run_cli(*retest, "eval.episodes=10", f"hydra.run.dir={tmp_path}/copies", cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "copies" / "results.json").read_text())["test/episodes"] == 10
    # the ensembles of a sweep's runs (the CPU's, then the GPU's): two seeds here, the second the first's one member
    assert len(sweeps) == 4
    where = lambda arg: arg.replace("outputs/challenge", f"{tmp_path}/challenge")  # noqa: E731
    for sweep, ensemble in zip(sweeps[::2], sweeps[1::2]):
        args = ["seed=0,1" if arg.startswith("seed=") else where(arg) for arg in _args(sweep)]
        out = run_cli(*args, *small, cwd=REPO)
        assert out.returncode == 0, out.stderr
        (folder,) = [arg.split("=", 1)[1] for arg in args if arg.startswith("hydra.sweep.dir=")]
        out = run_cli(*map(where, _args(ensemble)), "eval.episodes=10", f"hydra.run.dir={folder}-ensemble", cwd=REPO)
        assert out.returncode == 0, out.stderr
        results = json.loads(Path(f"{folder}-ensemble/results.json").read_text())
        assert results["ensemble"] == [f"{folder}/seed1/checkpoints/best.pt"]


def test_the_imagefolder_command_runs_on_folders_it_names(tmp_path):
    args = _dataset_commands()["imagefolder"]
    paths = [a.split("=[", 1)[1].rstrip("]") for a in args
             if a.split("=")[0] in ("dataset.train", "dataset.val", "dataset.test")]
    for path in paths:
        folder = tmp_path / Path(path).stem
        write_tree(folder, {f"class{i}": 4 for i in range(5)}, size=12)
        if path.endswith(".zip"):
            zip_tree(folder, tmp_path / path)
    out = run_cli(*args, *SMALL, "dataset.shots=1", "dataset.queries=2", "model.width=8", "hardware.num_threads=1",
                  f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "imagefolder"


def test_the_quick_runs_their_paired_comparison_and_the_inference_example_run(omniglot_cache, tmp_path):
    *runs, compare = [shlex.split(line) for line in _fenced_commands("A quick run and paired comparisons")[:3]]
    for args in runs:
        args = [arg.replace("outputs/quick", f"{tmp_path}/quick") for arg in args[1:]]
        out = run_cli(*args, *SMALL, *OMNIGLOT_SMALL, f"dataset.cache_dir={omniglot_cache}", cwd=REPO)
        assert out.returncode == 0, out.stderr
    assert compare[:2] == ["metarun-report", "--paired"]
    out = subprocess.run([sys.executable, "-m", "metarun.report.cli", "--paired", "--out", str(tmp_path),
                          *(arg.replace("outputs/quick", f"{tmp_path}/quick") for arg in compare[2:])],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "maml" in out.stdout and "protonet" in out.stdout and (tmp_path / "paired.csv").is_file()
    # the Few-shot inference page's runnable example, on the ProtoNet run's checkpoint, from the repository root
    example = [body for language, body in _blocks(_page("inference")) if language == "python"][-1]
    code = example.replace("outputs/quick/protonet", f"{tmp_path}/quick/protonet")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(ast.literal_eval(out.stdout.strip().splitlines()[-1])) == 25  # the 25 queries' predicted labels

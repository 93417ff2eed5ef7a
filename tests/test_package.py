"""The package: one version string, `metarun --version`, Hydra's shell completion, and what the wheel ships.

Building and installing the wheel takes about a minute, so CI does it in scripts/check_wheel.sh, not here.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

import metarun
from tests.conftest import REPO

METARUN = Path(sys.executable).parent / "metarun"  # the console script, as a user types it


def test_version_prints_the_package_version_without_composing_a_config_or_loading_torch(tmp_path):
    out = subprocess.run([METARUN, "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"metarun {metarun.__version__}\n"
    assert list(tmp_path.iterdir()) == []  # no run directory, no outputs/
    code = ("import sys; from metarun.runner.cli import main; sys.argv[1:] = ['--version']; main(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"metarun {metarun.__version__}", "False"], out.stderr


def test_the_distribution_takes_its_version_from_the_package_without_importing_it():
    # read as setuptools reads it when it builds: the literal in metarun/__init__.py, parsed, never executed
    code = ("import sys; from setuptools.config.pyprojecttoml import read_configuration; "
            "print(read_configuration('pyproject.toml')['project']['version'], 'metarun' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split() == [metarun.__version__, "False"], out.stderr
    assert f"## [{metarun.__version__}] - " in (REPO / "CHANGELOG.md").read_text()


def test_every_package_folder_is_listed_for_the_wheel():
    # setuptools ignores a folder missing from `packages`: the wheel would lack its modules or configs
    packages = set(read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]["packages"])
    modules = {".".join(["metarun", *p.parent.relative_to(REPO / "metarun").parts])
               for p in (REPO / "metarun").rglob("__init__.py")}
    configs = {".".join(["metarun.conf", *p.relative_to(REPO / "conf").parts])
               for p in [REPO / "conf", *(REPO / "conf").rglob("*")] if p.is_dir() and p.name != "__pycache__"}
    # the launcher plugin, in the namespace Hydra scans (listed too, so an editable install maps its folder)
    plugins = {"hydra_plugins", *(".".join(p.parent.relative_to(REPO).parts)
                                  for p in (REPO / "hydra_plugins").rglob("__init__.py"))}
    assert packages == modules | configs | plugins


def test_shell_completion_installs_for_bash_and_completes_a_group():
    script = subprocess.run([METARUN, "--shell-completion", "install=bash"], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion metarun" in script.stdout
    # what the installed function asks metarun while the user types `metarun algo=fo<TAB>`
    line = "metarun algo=fo"
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    query = subprocess.run([METARUN, "-sc", "query=bash"], env=env, capture_output=True, text=True)
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == ["algo=fomaml"]


def test_ci_builds_and_runs_the_wheel_with_the_script_users_can_run():
    script = REPO / "scripts" / "check_wheel.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/check_wheel.sh" in ci
    # after the tests, and its failure fails CI
    assert ci.index("python -m pytest") < ci.index("scripts/check_wheel.sh")
    assert "if ! scripts/check_wheel.sh; then" in ci

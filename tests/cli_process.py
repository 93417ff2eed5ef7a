"""``metarun ARGS`` in a process of its own, forked from a server that has already imported what every run imports.

A fresh ``python -m metarun.runner.cli`` spends about 3.5 s of CPU importing torch, torch._dynamo (which torch.optim pulls
in on first use), Hydra and metarun before it reads its first argument, and the suite starts a hundred of them. A
forkserver imports them once per test worker; each run is a fork of it, so it is still a process of its own
(its own exit status, output, working directory and environment, nothing left behind in the test's process),
started as from ``python -m metarun.runner.cli``. Tests of what happens at import or start-up, and of signals, start the
interpreter themselves.
"""

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# imported by the server once: the heavy imports of every run (none starts a thread, so forking them is safe)
PRELOAD = ["torch", "torch._dynamo", "hydra", "omegaconf", "metarun.runner.cli", "metarun.runner.train", "metarun.runner.evaluate"]
_context = None


def run(args: list, cwd=None) -> subprocess.CompletedProcess:
    """``metarun ARGS`` in ``cwd`` with this process's environment, as a CompletedProcess of its text output."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__, *PRELOAD])
    command = [sys.executable, "-m", "metarun.runner.cli", *args]
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        process = _context.Process(target=_main, args=(list(args), str(cwd or os.getcwd()), dict(os.environ),
                                                         str(stdout), str(stderr)))
        process.start()
        process.join()
        return subprocess.CompletedProcess(command, process.exitcode, stdout.read_text(), stderr.read_text())


def _main(args: list, cwd: str, environment: dict, stdout: str, stderr: str) -> None:
    """The forked run: the caller's directory, environment and arguments, output to files, the exit status of
    ``python -m metarun.runner.cli`` (atexit handlers run, as at an interpreter's exit)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    from metarun.runner import cli

    sys.argv = [cli.__file__, *args]
    code = 0
    try:
        cli.main()
    except SystemExit as exit:
        code = _status(exit)
    except BaseException:  # noqa: BLE001  (the interpreter's report of an uncaught exception, and its status)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _status(exit: SystemExit) -> int:
    """The exit status the interpreter gives an uncaught ``exit``: 0 for None, its number, else 1 after printing
    its message."""
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1

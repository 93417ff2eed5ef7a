#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel, check them with twine and against the checkout
# (every module and config inside, no tests), install the wheel with the cpu extra in a fresh venv outside the
# checkout, and from another folder run `metarun --version` and `metarun debug=default`.
#
#   scripts/check_wheel.sh
#
# Run it from the dev environment (`pip install -e ".[cpu,dev]"` brings build and twine); pip takes torch as
# for the set-up command, so set PIP_EXTRA_INDEX_URL where that needs the CPU index. CI runs it after the tests
# (.ci/run): 40-60 s on our 2-core machine, with torch's wheel on the disk. Everything goes to a temporary
# folder, removed at the end; the exit status is non-zero when any step fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
step() { printf '\ncheck_wheel [%ss]: %s\n' "$SECONDS" "$*"; }

step "build the sdist and the wheel"
python3 -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
# setuptools' warnings are tomorrow's errors: a package folder left out of `packages` ("would be ignored"), a
# deprecated field
if grep -q "^WARNING" "$work/build.log"; then
  grep "^WARNING" "$work/build.log" >&2
  echo "check_wheel: setuptools warned while building (above); python -m build shows the whole log" >&2
  exit 1
fi
python3 -m twine check --strict "$work"/dist/*
wheel="$(echo "$work"/dist/metarun-*.whl)"
sdist="$(echo "$work"/dist/metarun-*.tar.gz)"
ls -l "$wheel" "$sdist"

step "contents: every module and config of the checkout, no tests"
python3 - "$repo" "$wheel" "$sdist" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

repo, wheel, sdist = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
expected = {f"{p.relative_to(repo)}" for package in ("metarun", "hydra_plugins") for p in (repo / package).rglob("*.py")}
expected |= {f"metarun/conf/{p.relative_to(repo / 'conf')}" for p in (repo / "conf").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
in_wheel = {name for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("metarun-")}
in_sdist = [name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name]
problems = [f"missing from the wheel: {name}" for name in sorted(expected - in_wheel)]
problems += [f"not in the checkout but in the wheel: {name}" for name in sorted(in_wheel - expected)]
problems += [f"in the sdist: {name}" for name in in_sdist if name.startswith("tests/") or "__pycache__" in name]
if problems:
    sys.exit("check_wheel: " + "\n  ".join(["the package's contents differ from the checkout:", *problems]))
print(f"{len(in_wheel)} files in the wheel ({sum(n.endswith('.yaml') for n in in_wheel)} configs), "
      f"{len(in_sdist)} entries in the sdist, no tests")
EOF

step "install the wheel with the cpu extra in a fresh venv"
python3 -m venv "$work/venv"
# --no-compile: byte-compiling all of torch took half of this step (42 s to 21 s); the run compiles what it imports
"$work/venv/bin/pip" install -q --no-compile "$wheel[cpu]"

step "run it from another folder"
mkdir "$work/elsewhere" && cd "$work/elsewhere"
module="$("$work/venv/bin/python" -c "import metarun; print(metarun.__file__)")"
case "$module" in
  "$work/venv/"*) ;;
  *) echo "check_wheel: metarun imports from $module, not from the fresh venv" >&2; exit 1 ;;
esac
version="$("$work/venv/bin/metarun" --version)"
expected="metarun $(basename "$wheel" | cut -d- -f2)"
if [ "$version" != "$expected" ]; then
  echo "check_wheel: metarun --version printed '$version', not '$expected'" >&2
  exit 1
fi
echo "$version"
# without the sweep extra, Hydra's plugin scan finds metarun's launcher package and imports nothing that fails
status=0
"$work/venv/bin/metarun" debug=default 2> "$work/stderr.txt" || status=$?
cat "$work/stderr.txt" >&2
[ "$status" -eq 0 ] || { echo "check_wheel: metarun debug=default exited with $status" >&2; exit 1; }
if grep -q "Error importing" "$work/stderr.txt"; then
  echo "check_wheel: Hydra's plugin scan failed to import a module (above)" >&2
  exit 1
fi
results="$(find . -name results.json)"
[ -n "$results" ] || { echo "check_wheel: metarun debug=default wrote no results.json" >&2; exit 1; }
echo "check_wheel [${SECONDS}s]: ok ($results)"

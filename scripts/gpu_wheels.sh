#!/usr/bin/env bash
# Fetch the wheels that scripts/gpu_check.sh installs on an offline GPU node (the list: scripts/gpu_wheels.txt),
# on any machine with pip and a network; then carry DIR to the node and pass it as gpu_check.sh --wheels DIR.
#
#   scripts/gpu_wheels.sh [DIR] [--python-version 3.12]
#
# DIR defaults to .whl (git-ignored). Binary wheels are for CPython of --python-version on Linux x86_64
# (manylinux); packages published only as source archives (marked sdist in the list) are pure Python and are
# built into a wheel here with this machine's pip.
set -euo pipefail

usage() { sed -n 's/^#   //p' "$0"; exit 0; }

dir=.whl
python_version=3.12
while (($#)); do
    case $1 in
        --python-version) python_version=${2:?--python-version needs a value, e.g. 3.12}; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "gpu_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) dir=$1; shift ;;
    esac
done

list="$(dirname "$0")/gpu_wheels.txt"
mkdir -p "$dir"
while read -r module requirement kind; do
    [[ -z $module || $module == \#* ]] && continue
    if [[ $kind == sdist ]]; then
        python3 -m pip wheel --no-deps --wheel-dir "$dir" "$requirement"
    else
        python3 -m pip download --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --dest "$dir" "$requirement"
    fi
done <"$list"
echo "wheels for Python $python_version in $dir:"
ls -1 "$dir"

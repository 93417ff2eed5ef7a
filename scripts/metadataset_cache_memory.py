"""Memory of building a Meta-Dataset source's cache: flat in the number of records, far below the store's size.

    python scripts/metadataset_cache_memory.py [--records 100000] [--classes 400] [--source-size 28]
                                               [--image-size 84] [--dir DIR]

Writes a synthetic source in the official format (``tests/data/metadataset_fixture.py``: one TFRecord file per
class of ``source-size`` px RGB JPEGs, quickdraw-like, and a ``dataset_spec.json``), plus one a tenth its size,
then builds each one's train cache at ``image-size`` px with ``metarun.data.files.metadataset_files.source_store`` in a
fresh process, and prints one JSON line with, for each build:
  * ``ru_maxrss_mb``: the process's peak resident set (``resource.getrusage``), start-up included;
  * ``peak_rss_mb``, ``peak_rss_anon_mb``, ``peak_rss_file_mb``: the peaks of VmRSS and of its anonymous and
    file-backed parts (``/proc/self/status``), sampled every 20 ms during the build. The cache is written through
    a shared memory map whose pages ``write_store`` releases after each chunk, so neither part grows with the
    number of records: the file-backed part is the libraries (torch's), the anonymous part one chunk of decoded
    images, the records being read and Python;
  * ``rss_anon_before_mb``: the anonymous RSS before the build (Python, torch and metarun imported);
  * ``store_mb``, ``records``, ``seconds`` (the build), ``write_seconds`` (writing the synthetic source).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test fixture's writer, so the script writes exactly what the tests read
from tests.data.metadataset_fixture import write_source  # noqa: E402

FIELDS = {"VmRSS": "peak_rss_mb", "RssAnon": "peak_rss_anon_mb", "RssFile": "peak_rss_file_mb"}
SAMPLE_S = 0.02


def status_mb() -> dict:
    """The resident-set fields of ``/proc/self/status`` in MB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {FIELDS[k]: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines) if k in FIELDS}


def build(source: Path, cache: Path, image_size: int) -> dict:
    """Build ``source``'s train cache here, sampling the resident set meanwhile; the figures as a dict."""
    from metarun.data.files.metadataset_files import read_spec, source_store
    from metarun.logging.console import show_progress

    show_progress(False)
    before = status_mb()  # torch and metarun imported: the floor the build starts from
    peaks, done = dict(before), threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            for key, value in status_mb().items():
                peaks[key] = max(peaks[key], value)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    store = source_store(source, read_spec(source, ("train",)), "train", image_size, cache)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"records": len(store.images), "store_mb": round(store.images.numel() / 2**20, 1),
            "seconds": round(seconds, 1), "ru_maxrss_mb": round(maxrss, 1),
            **{key: round(value, 1) for key, value in peaks.items()},
            "rss_anon_before_mb": round(before["peak_rss_anon_mb"], 1)}


def measure(source: Path, cache: Path, image_size: int) -> dict:
    """``build`` in a fresh process, so that its peaks are the build's alone."""
    command = [sys.executable, __file__, "--build", str(source), "--cache", str(cache), "--image-size", str(image_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--source-size", type=int, default=28)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--dir", type=Path, help="where to write the sources and caches (default: a temporary folder)")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the measured child process
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(args.build, args.cache, args.image_size)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        builds = []
        for scale in (10, 1):  # a tenth of the records, then all: the anonymous peak should not grow with them
            classes = max(args.classes // scale, 1)
            per_class = args.records // args.classes
            start = time.perf_counter()
            source = write_source(Path(folder) / f"source-{scale}", "quickdraw", (classes, 0, 0), per_class,
                                  image_size=args.source_size)
            written = time.perf_counter() - start
            figures = measure(source, Path(folder) / "cache", args.image_size)
            builds.append({**figures, "write_seconds": round(written, 1)})
    print(json.dumps({"source_size": args.source_size, "image_size": args.image_size, "builds": builds}))


if __name__ == "__main__":
    main()

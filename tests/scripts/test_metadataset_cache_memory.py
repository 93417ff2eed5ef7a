"""scripts/metadataset_cache_memory.py builds two synthetic sources' caches and reports each build's memory."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "metadataset_cache_memory.py"


def test_a_small_run_reports_both_builds(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--records", "2000", "--classes", "20", "--image-size", "28",
                           "--dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert [build["records"] for build in report["builds"]] == [200, 2000]
    for build in report["builds"]:
        assert build["store_mb"] > 0 and build["ru_maxrss_mb"] >= build["peak_rss_anon_mb"] > 0

"""Tiny image trees written by the tests: folders and zips in the class-folder layout."""

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_tree(root: Path, classes: dict, size: int = 12, mode: str = "L", suffix: str = ".png") -> dict:
    """Write ``{class path: image count}`` as ``root/<class>/<i>.<suffix>`` images; returns {class: [arrays]}."""
    rng = np.random.default_rng(len(classes))
    written = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        shape = (size, size) if mode == "L" else (size, size, 3)
        arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
        for i, array in enumerate(arrays):
            Image.fromarray(array, mode).save(root / name / f"{i:03d}{suffix}")
        written[name] = arrays
    return written


def zip_tree(folder: Path, dest: Path, wrapper: str = "") -> Path:
    """Zip every file under ``folder`` into ``dest``, inside a top-level folder ``wrapper`` when given."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{wrapper}{path.relative_to(folder).as_posix()}")
    return dest

"""Dataset pickles read with an unpickler that can only rebuild what those formats hold, so a file never runs code.

A pickle names the functions that rebuild its objects and the plain unpickler imports and calls whatever it names,
so a crafted dataset file runs any code it likes. ``load`` resolves only ``ALLOWED``: numpy arrays, dtypes and
scalars as numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) write them at protocols 0 to 5, and
``_codecs.encode``, with which Python 3 writes bytes at protocols 0 to 2. Dicts, lists, tuples, str, bytes
(Python 2's str included) and numbers need no global. Any other global is refused before it is imported.
"""

import io
import pickle
from pathlib import Path

from metarun.utils.errors import RunError

NUMPY_CORES = ("numpy.core", "numpy._core")  # numpy 2 renamed numpy.core; older pickles name the old module
ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"{core}.multiarray", name) for core in NUMPY_CORES for name in ("_reconstruct", "scalar")),
    *((f"{core}.numeric", "_frombuffer") for core in NUMPY_CORES),  # protocol 5's out-of-band array buffers
})


class DatasetUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` gives ``ALLOWED`` globals only; any other is a RunError naming the file."""

    def __init__(self, file, name: str, holds: str, fix: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self.name, self.holds, self.fix = name, holds, fix

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise RunError(f"{self.name} asks the unpickler for {module}.{name}, which {self.holds} never holds; metarun "
                       f"refuses to load it (a pickle can run code): {self.fix}")


def load(source, holds: str, fix: str, encoding: str, name: str = ""):
    """The object pickled in ``source`` (a file's path, or the pickle's bytes with ``name`` saying where they
    came from), read with ``DatasetUnpickler``.

    Args:
        holds: what the file should be, e.g. "a miniImageNet pickle", said when it asks for another global.
        fix: where to get a good copy, said after it.
        encoding: how Python 2's str is read ("latin1": as str, "bytes": as bytes).
    """
    if isinstance(source, bytes):
        return DatasetUnpickler(io.BytesIO(source), name, holds, fix, encoding).load()
    with open(source, "rb") as file:  # streamed: the file may be several GB
        return DatasetUnpickler(file, str(Path(source)), holds, fix, encoding).load()

"""The restricted unpickler: what numpy and Python 2 write into dataset pickles loads at every protocol; any other
global is refused before it is imported, in one line naming the file, the global and where to get a good copy."""

import io
import pickle

import numpy as np
import pytest

from metarun.data.files import safe_pickle
from metarun.utils.errors import RunError
from tests.data.formats import Payload, assert_refused, python2_pickle

# what the dataset pickles hold: uint8 images, encoded images as an object array, labels, scalars, names
CONTENT = {"image_data": np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
           "encoded": np.array([np.arange(5, dtype=np.uint8), np.arange(3, dtype=np.uint8)], dtype=object),
           "labels": np.array([3, 1, 2]), "count": np.int64(7), "mean": np.float32(0.5),
           "names": ["n01", "n02"], "class_dict": {"n01": [0], "n02": [1]}, "raw": b"\x00\xff", "flag": True}


def load(data: bytes, encoding="ASCII"):
    return safe_pickle.load(data, "a test pickle", "make another", encoding, name="memory")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_content_loads_at_every_protocol(protocol):
    assert repr(load(pickle.dumps(CONTENT, protocol=protocol))) == repr(CONTENT)


def test_python2_pickles_load_with_either_encoding():
    content = {key: value for key, value in CONTENT.items() if key != "raw"}  # Python 2 had no bytes apart from str
    assert repr(load(python2_pickle(content), "latin1")) == repr(content)
    as_bytes = load(python2_pickle(content), "bytes")
    assert as_bytes[b"names"] == [b"n01", b"n02"] and np.array_equal(as_bytes[b"image_data"], content["image_data"])


def test_each_allowed_global_is_one_that_numpy_or_python_2_writes():
    seen = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for data in [pickle.dumps(CONTENT, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)] + [python2_pickle(CONTENT)]:
        Recording(io.BytesIO(data), encoding="latin1").load()

    def either_numpy(names):  # numpy 1.x wrote numpy.core where numpy 2 writes numpy._core: one entry for both
        return {(module.replace("numpy._core", "numpy.core"), name) for module, name in names}

    assert seen <= safe_pickle.ALLOWED and either_numpy(seen) == either_numpy(safe_pickle.ALLOWED)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_any_other_global_is_refused_before_it_runs(protocol, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps({"image_data": Payload(marker)}, protocol=protocol))
    with pytest.raises(RunError) as caught:
        safe_pickle.load(path, "a test pickle", "make another", "ASCII")
    assert_refused(str(caught.value), path, marker)
    assert str(caught.value).endswith("which a test pickle never holds; metarun refuses to load it (a pickle can run "
                                      "code): make another")


@pytest.mark.parametrize("target", [eval, pickle.loads, np.load, np.frombuffer])
def test_near_misses_are_refused_too(target):
    with pytest.raises(RunError, match=rf"^memory asks the unpickler for \S+\.{target.__name__}, which"):
        load(pickle.dumps(target))


def test_the_crafted_pickle_of_the_loader_tests_does_run_code_when_unpickled_plainly(tmp_path):
    pickle.loads(pickle.dumps(Payload(tmp_path / "marker")))  # so that the loaders' tests can see it did not run
    assert (tmp_path / "marker").exists()

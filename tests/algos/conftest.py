"""One intra-op thread for the algorithm tests: on a busy 2-core machine torch's default two make their tiny
problems many times slower (the training runs set their own, hardware.num_threads; tests/conftest.py puts the
process's count back after each test)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)

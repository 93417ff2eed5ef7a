"""One intra-op thread for the algorithm tests: on a busy 2-core machine torch's default two make their tiny
problems many times slower (the training runs set their own, hardware.num_threads)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded: the test tensors are tiny, and on 2 shared cores a second intra-op
    thread makes each op wait on a busy core (100x slower when the other core is taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

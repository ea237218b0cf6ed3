"""Shared fixtures: paths to the real test files and small synthetic slides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import DATA


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and bags: one torch thread is faster, and immune to other processes on a
    shared CPU (used by the MIL test modules through ``pytestmark``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole test session (2 CPUs, like this machine); the Ray
    executor joins it instead of starting its own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

"""Shared pytest set-up for svdlib's tests.

- No progress bars, no GUI windows: TQDM_DISABLE=1 and MPLBACKEND=Agg are set before any
  test module (or notebook kernel started by nbval/papermill, which inherit the environment)
  imports tqdm or matplotlib.
- Every test starts from the same random state (python, numpy, torch).
- torch runs single-threaded (OMP_NUM_THREADS=1 and torch.set_num_threads(1)).
- ``@pytest.mark.cuda`` tests are skipped, with the reason, when torch sees no CUDA device.
"""
from __future__ import annotations

import os
import random

os.environ["TQDM_DISABLE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
# Test matrices are small: on a 2-core CI machine OpenMP threads cost more than they save
# (10-20x slower under load), and one thread makes CPU results reproducible run to run.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

SEED = 0


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed python, numpy and torch before each test, so failures reproduce."""
    random.seed(SEED)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    else:
        np.random.seed(SEED)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    else:
        torch.manual_seed(SEED)
        torch.set_num_threads(1)
    yield


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture
def repo_root():
    """Path of the repository checkout (the folder holding pyproject.toml)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1]

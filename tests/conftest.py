"""Shared pytest set-up for svdlib's tests.

- No progress bars, no GUI windows: TQDM_DISABLE=1 and MPLBACKEND=Agg are set before any
  test module (or notebook kernel started by nbval/papermill, which inherit the environment)
  imports tqdm or matplotlib.
- Every test starts from the same random state (python, numpy, torch).
- torch runs single-threaded (OMP_NUM_THREADS=1 and torch.set_num_threads(1)) unless
  OMP_NUM_THREADS is set (``make test-perturbed`` checks the suite under 2 threads too).
- ``SVDLIB_PERTURB`` switches on a numerical perturbation of the eigensolvers
  (tests/_perturb.py), in this process and in every notebook kernel it starts.
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
THREADS = max(1, int(os.environ["OMP_NUM_THREADS"]))

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
        torch.set_num_threads(THREADS)
    yield


_KERNEL_STARTUP = """\
import sys
sys.path.insert(0, {tests!r})
import _perturb
_perturb.install_from_env()
"""


def pytest_configure(config):
    """Install the ``SVDLIB_PERTURB`` perturbation here and, through an IPython startup file
    in a private IPYTHONDIR, in the notebook kernels that nbval and papermill start."""
    import _perturb

    modes = _perturb.install_from_env()
    if not modes:
        return
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    ipython_dir = Path(tempfile.mkdtemp(prefix="svdlib-perturb-ipython-"))
    atexit.register(shutil.rmtree, ipython_dir, ignore_errors=True)
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    tests = str(Path(__file__).resolve().parent)
    (startup / "00-svdlib-perturb.py").write_text(_KERNEL_STARTUP.format(tests=tests))
    os.environ["IPYTHONDIR"] = str(ipython_dir)


def pytest_report_header(config):
    perturb = os.environ.get("SVDLIB_PERTURB", "")
    knobs = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")}
    knobs = ", ".join(f"{k}={v}" for k, v in knobs.items() if v)
    return f"svdlib numerics: SVDLIB_PERTURB={perturb or '(none)'}, {knobs}"


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

"""configs/notebooks/NN_*.yaml set only parameters their notebook declares, with its types."""
from pathlib import Path

import pytest
import yaml

from svdlib.experiments.notebook import notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "configs" / "notebooks").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_parameter_file_matches_its_notebook(path):
    (notebook,) = (ROOT / "notebooks").glob(f"{path.name[:2]}_*.ipynb")
    declared = notebook_parameters(notebook)
    values = yaml.safe_load(path.read_text())
    assert values and set(values) <= set(declared), sorted(set(values) - set(declared))
    for name, value in values.items():
        assert type(value).__name__ == declared[name]["type"], (name, value, declared[name])

"""Packaging: layout, pyproject.toml <-> environment.yml <-> Makefile agreement, a light and
offline ``import svdlib``, and the CI script's refusal of a run that tested nothing.

All static except three subprocesses (an import, a torchvision op, the CI script with a fake
``make``); conda is not available here, so environment.yml is checked by reading it.
"""
from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
MAKEFILE = (REPO / "Makefile").read_text()
README = (REPO / "README.md").read_text()

# conda-forge names of PyPI packages, where they differ
CONDA_NAMES = {"pytorch": "torch"}


def _requirements(specs):
    return {Requirement(s).name.lower(): Requirement(s) for s in specs}


def _make_default(var: str) -> str:
    match = re.search(rf"^{var}\s*\?=\s*(.*)$", MAKEFILE, re.MULTILINE)
    assert match, f"Makefile: no `{var} ?= ...` default"
    return match.group(1).strip()


def _lower_bound(spec: SpecifierSet) -> str:
    bounds = [s.version for s in spec if s.operator == ">="]
    assert len(bounds) == 1, f"expected one >= bound in {spec}"
    return bounds[0]


def test_top_level_layout():
    for folder in ("svdlib", "svdlib/experiments", "notebooks", "tests", "configs", "benchmarks", ".ci"):
        assert (REPO / folder).is_dir(), f"missing folder {folder}/"
    for name in ("pyproject.toml", "environment.yml", "README.md", "Makefile", "LICENSE",
                 "CITATION.cff", "CHANGELOG.md", ".gitignore", ".ci/run"):
        assert (REPO / name).is_file(), f"missing file {name}"
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {".venv", "results", "runs"} <= ignored


def test_pyproject_declares_ranges_not_pins():
    assert PROJECT["name"] == "svdlib"
    assert SpecifierSet(PROJECT["requires-python"]) == SpecifierSet(">=3.10")
    core = _requirements(PROJECT["dependencies"])
    assert set(core) == {"torch", "numpy", "tqdm", "pyyaml"}, "core dependencies stay minimal"
    extras = PROJECT["optional-dependencies"]
    wanted = {
        "notebooks": {"jupyterlab", "ipykernel", "matplotlib", "seaborn", "papermill", "torchvision",
                      "scikit-learn", "pandas", "scipy"},
        "test": {"pytest", "nbval", "nbstripout", "pytest-timeout", "hypothesis"},
        "cuda": {"nvmath-python"},
        "deploy": {"onnx", "onnxscript", "onnxruntime"},
    }
    for extra, names in wanted.items():
        assert names <= set(_requirements(extras[extra])), f"extra {extra!r} lacks {names - set(_requirements(extras[extra]))}"
    for spec in PROJECT["dependencies"] + [s for group in extras.values() for s in group]:
        req = Requirement(spec)
        assert req.specifier, f"{spec!r}: declare a lower bound"
        assert all(s.operator in (">=", "!=", "<") for s in req.specifier), f"{spec!r}: ranges, not pins"
    # torchvision 0.19 is the release built for torch 2.4: the two lower bounds must match.
    assert _lower_bound(core["torch"].specifier) == "2.4"
    assert _lower_bound(_requirements(extras["notebooks"])["torchvision"].specifier) == "0.19"


def test_environment_yml_agrees_with_pyproject_and_makefile():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert [c for c in env["channels"] if c != "nodefaults"] == ["conda-forge"], "conda-forge only"
    conda, pip_lines = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_lines += dep["pip"]
        else:
            conda.append(dep)
    conda_reqs = {Requirement(d.replace("=", "==", 1) if re.match(r"^[\w-]+=[^=]", d) else d) for d in conda}
    by_name = {CONDA_NAMES.get(r.name.lower(), r.name.lower()): r for r in conda_reqs}
    assert "pip" in by_name and "python" in by_name
    assert by_name["python"].specifier == SpecifierSet(PROJECT["requires-python"])
    core = _requirements(PROJECT["dependencies"])
    for name, req in by_name.items():  # anything conda installs must match pyproject's range
        if name in ("python", "pip"):
            continue
        assert name in core, f"environment.yml installs {name}, which pyproject.toml does not declare"
        assert req.specifier == core[name].specifier, f"{name}: {req.specifier} vs {core[name].specifier}"
    installs = [line for line in pip_lines if re.match(r"^-e\s+\.\[", line)]
    assert len(installs) == 1, f"the pip section must install the package itself: {pip_lines}"
    extras = set(re.search(r"\[(.*)\]", installs[0]).group(1).split(","))
    assert extras <= set(PROJECT["optional-dependencies"])
    assert extras == set(_make_default("EXTRAS").split(",")), "environment.yml and `make` install different extras"
    assert len(pip_lines) == 1, "dependencies belong in pyproject.toml, not in environment.yml's pip section"


def test_version_is_declared_once_and_agrees():
    tree = ast.parse((REPO / "svdlib" / "__init__.py").read_text())
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert versions == [PROJECT["version"]], f"svdlib.__version__ {versions} vs pyproject {PROJECT['version']}"
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert str(cff["version"]) == PROJECT["version"]


def test_citation_credits_the_three_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] == "svdlib" and cff["license"] == "MIT"
    titles = " ".join(ref["title"] for ref in cff["references"]).lower()
    for title in ("robust differentiable svd",
                  "why approximate matrix square root outperforms accurate svd in global covariance pooling",
                  "improving covariance conditioning of the svd meta-layer by orthogonality"):
        assert title in titles, f"CITATION.cff does not credit {title!r}"
    assert "MIT License" in (REPO / "LICENSE").read_text()


def test_makefile_and_readme_agree_on_the_two_commands():
    assert _make_default("PYTHON") == "python3"
    assert _make_default("PROFILE") == "quick"
    for line in ("export TQDM_DISABLE := 1", "export MPLBACKEND := Agg"):
        assert line in MAKEFILE
    assert re.search(r"^\$\(STAMP\): pyproject.toml \| \$\(PY\)$", MAKEFILE, re.MULTILINE), "reinstall only when pyproject.toml changes"
    recipe = re.search(r"^test: .*\n\t(.*)$", MAKEFILE, re.MULTILINE).group(1)
    assert "-m pytest tests $(NBVAL_NOTEBOOKS) --nbval-lax --nbval-current-env" in recipe
    assert _make_default("NBVAL_NOTEBOOKS") == "$(wildcard notebooks/0*.ipynb)"
    assert "pytest tests notebooks/0*.ipynb --nbval-lax --nbval-current-env" in README
    assert "-m svdlib.experiments.notebook" in re.search(r"^reproduce: .*\n\t(.*)$", MAKEFILE, re.MULTILINE).group(1)
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in ci
    # CI runs the README's test command, then the same suite perturbed (issue 13)
    assert re.findall(r"^run_target .*$", ci, re.MULTILINE) == ["run_target test", "run_target test-perturbed"]
    assert 'make "$target" 2>&1 | tee "$log" || status=$?' in ci
    perturbed = re.search(r"^test-perturbed: .*\n\t(.*)$", MAKEFILE, re.MULTILINE).group(1)
    assert perturbed.startswith("SVDLIB_PERTURB='$(PERTURB)' ") and perturbed.endswith(recipe)
    for text in ("make test", "make reproduce", "papermill", "-f configs/", ",cuda]", "environment.yml",
                 "What works today", "torch==2.14.1", "torchvision==0.29.1"):
        assert text in README, f"README.md does not mention {text!r}"


_BLOCK_NETWORK = textwrap.dedent(
    """
    import socket, sys
    def _no_network(*args, **kwargs):
        raise RuntimeError("network access during import: %r" % (args,))
    socket.socket.connect = _no_network
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network
    """
)


def test_import_is_offline_and_leaves_optional_dependencies_alone():
    code = _BLOCK_NETWORK + textwrap.dedent(
        """
        import svdlib, svdlib.experiments.notebook
        svdlib.sqrtm, svdlib.covariance, svdlib.BACKWARDS
        heavy = ["torchvision", "sklearn", "matplotlib", "seaborn", "pandas", "papermill",
                 "nbformat", "jupyter_client", "nvmath", "onnx", "onnxscript", "onnxruntime"]
        print(sorted(m for m in heavy if m in sys.modules))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"`import svdlib` imported optional dependencies: {proc.stdout}"


def test_installed_torch_and_torchvision_load_together():
    pytest.importorskip("torchvision", reason="the notebooks extra is not installed")
    code = (
        "import torch, torchvision\n"
        "boxes = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.05], [5., 5., 6., 6.]])\n"
        "keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)\n"
        "print(keep.tolist())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torch and torchvision do not load together:\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "[0, 2]"  # the compiled nms op ran: the overlapping box is dropped


PASSED = "collected 3 items\n...\n======== 3 passed, 1 skipped in 1.20s ========"


@pytest.mark.parametrize(
    "output, status, perturbed, ok",
    [
        (PASSED, 0, PASSED, True),
        ("collected 0 items\n\n======== no tests ran in 0.01s ========", 0, PASSED, False),
        ("collected 0 items\n\n======== no tests ran in 0.01s ========", 2, PASSED, False),
        ("======== 1 failed, 2 passed in 1.00s ========", 2, PASSED, False),
        ("nothing that looks like pytest", 0, PASSED, False),
        ("======== 4 skipped in 0.30s ========", 0, PASSED, False),
        (PASSED, 0, "======== 1 failed, 2 passed in 1.00s ========", False),
        (PASSED, 0, "======== 4 skipped in 0.30s ========", False),
    ],
    ids=["passed", "no-tests", "no-tests-exit", "failed", "no-summary", "all-skipped",
         "perturbed-failed", "perturbed-tested-nothing"],
)
def test_ci_script_refuses_runs_that_tested_nothing(tmp_path, output, status, perturbed, ok):
    """.ci/run runs `make test`, then `make test-perturbed`; each must pass at least one test."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    script = clone / ".ci" / "run"
    script.write_text((REPO / ".ci" / "run").read_text())
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_make = fake_bin / "make"
    fake_make.write_text(
        "#!/usr/bin/env bash\n"
        f"if [ \"$1\" = test ]; then cat <<'EOF'\n{output}\nEOF\nexit {status}\nfi\n"
        f"if [ \"$1\" = test-perturbed ]; then cat <<'EOF'\n{perturbed}\nEOF\nexit 0\nfi\n"
        "exit 99\n"
    )
    fake_make.chmod(fake_make.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    assert output.splitlines()[-1] in proc.stdout  # the test output is shown, not swallowed
    first_passed = output == PASSED and status == 0
    logs = ["run", "test-perturbed.log", "test.log"] if first_passed else ["run", "test.log"]
    assert sorted(p.name for p in (clone / ".ci").iterdir()) == logs
    if first_passed:
        assert perturbed.splitlines()[-1] in proc.stdout

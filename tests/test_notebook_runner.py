"""The papermill runner (svdlib/experiments/notebook.py) on tiny notebooks written to tmp_path.

Each executed notebook starts a real kernel (about a second), so the kernel-running tests are
few and each checks several things.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from svdlib.experiments import notebook as runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMETERS = (
    "n: int = 2  # a number\n"
    'mode: str = "ok"  # ok | raise | sleep\n'
    'profile: str = "quick"  # suite-wide parameter\n'
    "verbose: bool = False  # a flag\n"
    'results_dir: str = ""  # where outputs go'
)
TINY_CELLS = [
    'import os, time\nprint("cwd", os.getcwd())\nprint("n squared", n * n, type(verbose).__name__)',
    (
        'if mode == "raise":\n    raise ZeroDivisionError("boom at cell three")\n'
        'if mode == "sleep":\n    time.sleep(60)'
    ),
    (
        'if results_dir:\n    with open(os.path.join(results_dir, "n.json"), "w") as fh:\n'
        '        fh.write(f"{{\\"n\\": {n}, \\"profile\\": \\"{profile}\\"}}")'
    ),
]


def _write_notebook(path: Path, parameters: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), params]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def tiny(tmp_path):
    return _write_notebook(tmp_path / "nbs" / "01_tiny.ipynb", TINY_PARAMETERS, TINY_CELLS)


def _stdout(executed: Path) -> str:
    nb = json.loads(executed.read_text())
    return "".join(
        "".join(out.get("text", ""))
        for cell in nb["cells"]
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


def test_run_notebook_injects_typed_parameters_and_writes_results(tiny, tmp_path):
    out = tmp_path / "results"
    run = runner.run_notebook(tiny, out, {"n": "5", "verbose": "true"})

    assert run.status == "ok" and run.output == out.resolve() / "01_tiny.ipynb"
    text = _stdout(run.output)
    assert "n squared 25 bool" in text  # "5" -> int 5, "true" -> bool True
    assert f"cwd {tiny.parent.resolve()}" in text  # kernel runs beside the notebook, like Jupyter
    assert json.loads((out / "01_tiny" / "n.json").read_text()) == {"n": 5, "profile": "quick"}
    record = json.loads((out / "01_tiny.run.json").read_text())
    assert record["status"] == "ok" and record["parameters"] == {"n": 5, "verbose": True}
    assert record["results_dir"] == str(out.resolve() / "01_tiny")
    assert not list(out.glob(".*partial*")) and not (out / "01_tiny.failed.ipynb").exists()

    with pytest.raises(FileExistsError, match="finished run"):
        runner.run_notebook(tiny, out, {"n": 5})


def test_failing_cell_is_named_with_its_index_error_and_saved_notebook(tiny, tmp_path):
    out = tmp_path / "results"
    with pytest.raises(runner.NotebookExecutionError) as info:
        runner.run_notebook(tiny, out, {"mode": "raise"})
    err = info.value
    # source cells: 0 markdown, 1 parameters, 2 print, 3 the raising cell
    assert err.cell_index == 3
    assert err.ename == "ZeroDivisionError" and err.evalue == "boom at cell three"
    assert err.execution_count is not None
    message = str(err)
    assert "cell 3" in message and "ZeroDivisionError: boom at cell three" in message
    assert 'raise ZeroDivisionError("boom at cell three")' in message
    assert err.output == out.resolve() / "01_tiny.failed.ipynb" and err.output.is_file()
    assert "ZeroDivisionError" in err.output.read_text()
    assert not (out / "01_tiny.ipynb").exists()  # only finished runs get the plain name
    assert json.loads((out / "01_tiny.run.json").read_text())["status"] == "failed"


def test_cell_timeout_is_reported_as_a_failing_cell(tiny, tmp_path):
    with pytest.raises(runner.NotebookExecutionError) as info:
        runner.run_notebook(tiny, tmp_path / "r", {"mode": "sleep"}, timeout=1)
    assert info.value.cell_index == 3
    assert "Timeout" in info.value.ename


def test_a_sub_second_timeout_is_a_timeout_of_the_running_cell(tiny, tmp_path, capsys):
    """nbclient counts whole seconds: 0.5 used to fail before any cell ran, with a TraitError
    reported "in an unknown cell"; it is applied as 1 s."""
    with pytest.raises(runner.NotebookExecutionError) as info:
        runner.run_notebook(tiny, tmp_path / "r", {"mode": "sleep"}, timeout=0.5)
    err = info.value
    assert err.cell_index == 3 and "Timeout" in err.ename
    first = str(err).splitlines()[0]
    assert "timed out in cell 3" in first and "timeout of 1 s (0.5 s requested" in first, first
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match=r"timeout must be None or a number of seconds > 0"):
            runner.run_notebook(tiny, tmp_path / "r2", timeout=bad)
    assert runner.main([str(tiny), "--results", str(tmp_path / "r3"), "--timeout", "0"]) == 2
    assert "timeout must be" in capsys.readouterr().err


def test_a_failure_in_the_injected_parameters_cell_is_located(tmp_path):
    """A timeout (or any error) in the cell papermill injects, before any notebook cell ran,
    names that cell instead of "an unknown cell"."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n: int = 2")
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("n = 3")
    injected.metadata["tags"] = ["injected-parameters"]
    injected.metadata["papermill"] = {"exception": True, "status": "failed"}
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, injected, nbformat.v4.new_code_cell("n")]
    executed = tmp_path / "01_t.failed.ipynb"
    nbformat.write(nb, executed)
    index, count, ename, evalue, source, where = runner._locate_failure(executed)
    assert index is None and where == "the parameters cell injected by papermill (after cell 1)"
    err = runner.NotebookExecutionError(tmp_path / "01_t.ipynb", index, count, "CellTimeoutError",
                                        "A cell timed out", source, executed, location=where,
                                        timeout=1.5)
    first = str(err).splitlines()[0]
    assert first == (f"{tmp_path / '01_t.ipynb'} timed out in the parameters cell injected by "
                     "papermill (after cell 1): it ran longer than the per-cell timeout of 2 s "
                     "(1.5 s requested; nbclient counts whole seconds) (CellTimeoutError)")


def test_parameters_are_validated_before_any_kernel_starts(tiny, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match=r"does not declare \['epochs'\]"):
        runner.run_notebook(tiny, out, {"epochs": 3})
    with pytest.raises(ValueError, match="results_dir is set by the runner"):
        runner.run_notebook(tiny, out, {"results_dir": "/elsewhere"})
    with pytest.raises(ValueError, match="'n' of 01_tiny.ipynb is declared as int.*'five'"):
        runner.run_notebook(tiny, out, {"n": "five"})
    with pytest.raises(ValueError, match="'verbose'.*bool.*'maybe'"):
        runner.run_notebook(tiny, out, {"verbose": "maybe"})
    with pytest.raises(ValueError, match="kernel: no Jupyter kernel named 'no-such-kernel'"):
        runner.run_notebook(tiny, out, kernel="no-such-kernel")
    bare = _write_notebook(tmp_path / "02_bare.ipynb", "n: int = 1  # no results_dir", ["n"])
    with pytest.raises(ValueError, match="declares no `results_dir`"):
        runner.run_notebook(bare, out)
    config = tmp_path / "c.yaml"
    config.write_text("- not\n- a mapping\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        runner.run_notebook(tiny, out, config=config)
    assert not out.exists()  # nothing was written for a rejected call


def test_string_values_follow_the_declared_type():
    nb = Path("x.ipynb")
    assert runner._coerce("a", "1.5e-3", "float", nb) == pytest.approx(1.5e-3)
    assert runner._coerce("a", "off", "bool", nb) is False
    assert runner._coerce("a", "07", "str", nb) == "07"
    assert runner._coerce("a", "[1, 2]", "None", nb) == [1, 2]  # unannotated: read as YAML
    assert runner._coerce("a", 3, "str", nb) == 3  # non-strings are left alone


def test_suite_cli_routes_parameters_skips_finished_and_refuses_mixed_results(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    _write_notebook(nbs / "01_tiny.ipynb", TINY_PARAMETERS, TINY_CELLS)
    _write_notebook(nbs / "02_plain.ipynb", 'results_dir: str = ""  # out', ['print("plain")'])
    (nbs / "notes.ipynb").write_text("{}")  # not NN_name: not part of the suite
    config = tmp_path / "tiny.yaml"
    config.write_text("n: 4\nverbose: true\n")
    results = tmp_path / "results"
    common = ["--pattern", str(nbs), "--results", str(results), "--profile", "full"]

    assert runner.main([*common, "-f", str(config), "-p", "n", "6"]) == 0
    tiny_record = json.loads((results / "01_tiny.run.json").read_text())
    plain_record = json.loads((results / "02_plain.run.json").read_text())
    # -p beats -f; profile goes only where it is declared
    assert tiny_record["parameters"] == {"n": 6, "verbose": True, "profile": "full"}
    assert plain_record["parameters"] == {}
    assert "n squared 36 bool" in _stdout(results / "01_tiny.ipynb")

    capsys.readouterr()
    assert runner.main([*common, "-f", str(config), "-p", "n", "6"]) == 0
    assert capsys.readouterr().err.count("skipped: finished before") == 2

    assert runner.main([*common, "-p", "n", "7", "--only", "01"]) == 2
    assert "finished with parameters" in capsys.readouterr().err
    assert runner.main([*common, "-p", "epochs", "7"]) == 2
    assert "declared by none" in capsys.readouterr().err
    assert runner.main([*common, "--only", "05"]) == 2
    assert "match no notebook" in capsys.readouterr().err


def test_module_entry_point_lists_the_real_suite():
    proc = subprocess.run(
        [sys.executable, "-m", "svdlib.experiments.notebook", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "notebooks/00_tour.ipynb" in proc.stdout
    assert "results_dir: str" in proc.stdout


def _images(executed: Path) -> list[str]:
    nb = json.loads(executed.read_text())
    return [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in nb["cells"] if c["cell_type"] == "code"
            for out in c.get("outputs", []) if "image/png" in out.get("data", {})]


def test_executed_notebooks_carry_their_figures_while_the_caller_is_headless(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what make exports: nothing may open a window
    nb = _write_notebook(tmp_path / "nbs" / "02_plot.ipynb", 'results_dir: str = ""  # outputs', [
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()",
        "fig, ax = plt.subplots()\nax.plot([2, 1])  # no show(): the inline backend draws it at the cell's end",
        'import matplotlib\nprint(matplotlib.get_backend())',
    ])
    run = runner.run_notebook(nb, tmp_path / "out", timeout=120)
    assert len(_images(run.output)) == 2
    assert "inline" in _stdout(run.output)
    assert os.environ["MPLBACKEND"] == "Agg"  # restored for the caller
    headless = runner.run_notebook(nb, tmp_path / "agg", timeout=120, inline_figures=False)
    assert _images(headless.output) == [] and "agg" in _stdout(headless.output).lower()


def test_jobs_run_notebooks_side_by_side_and_the_aggregator_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: papermill moves the working directory while it runs
    nbs = tmp_path / "nbs"
    stamp = 'import time\nprint("start", time.time())\ntime.sleep(2)\nprint("end", time.time())'
    for name in ("01_a", "02_b"):
        _write_notebook(nbs / f"{name}.ipynb", 'results_dir: str = ""  # out', [stamp])
    _write_notebook(nbs / "03_sum.ipynb", 'results_root: str = ""  # the suite\nresults_dir: str = ""  # out',
                    ['import time, os\nprint("start", time.time(), sorted(os.listdir(results_root)))'])
    runs = runner.run_suite("nbs", "results", jobs=2, log=lambda msg: None)
    assert [r.notebook.stem for r in runs] == ["01_a", "02_b", "03_sum"] and all(r.status == "ok" for r in runs)
    assert os.getcwd() == str(tmp_path)

    def times(stem):
        return [float(line.split()[1]) for line in _stdout(tmp_path / "results" / f"{stem}.ipynb").splitlines()]

    (a0, a1), (b0, b1) = times("01_a"), times("02_b")
    assert max(a0, b0) < min(a1, b1)  # both kernels slept at the same time
    assert times("03_sum")[0] > max(a1, b1)  # the aggregator started after both finished
    with pytest.raises(ValueError, match="jobs"):
        runner.run_suite(nbs, tmp_path / "results", jobs=0)


@pytest.mark.parametrize("text", ["n: [unclosed\n", "n: !!python/object/apply:os.system ['echo hi']\n", "\t- tab\n"])
def test_malformed_parameter_file_is_a_one_line_cli_error_naming_it(tmp_path, capsys, text):
    """Issue 17: `-f bad.yaml` printed a raw yaml traceback."""
    tiny = _write_notebook(tmp_path / "01_tiny.ipynb", TINY_PARAMETERS, TINY_CELLS)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert runner.main([str(tiny), "--results", str(tmp_path / "r"), "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not parse parameter file ") and "bad.yaml" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()

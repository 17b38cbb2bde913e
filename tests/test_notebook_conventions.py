"""Every notebooks/*.ipynb follows the notebook conventions (README.md, "Notebooks").

- named ``NN_topic.ipynb`` with a unique two-digit number;
- kernelspec ``python3`` (nbval --nbval-current-env and papermill both rely on it);
- the first code cell is tagged ``parameters`` and holds only typed defaults with a comment
  (``epochs: int = 1  # comment``), one of them ``results_dir: str = ""``;
- outputs stripped (``nbstripout --keep-count``) except cells tagged ``keep_output``, which
  carry the line ``# NBVAL_CHECK_OUTPUT`` and deterministic text only;
- a markdown title, and a "What we showed" section.

Static checks only: executing the notebooks is nbval's job (``make test``).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from svdlib.experiments.notebook import parse_parameter_cell

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NAME = re.compile(r"^(\d{2})_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
SIMPLE_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,)}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def test_the_suite_exists_and_numbers_are_unique():
    assert (NOTEBOOK_DIR / "00_tour.ipynb") in NOTEBOOKS
    numbers = [NAME.match(p.name).group(1) for p in NOTEBOOKS if NAME.match(p.name)]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"two notebooks share the numbers {duplicates}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_name_kernel_and_format(path):
    assert NAME.match(path.name), f"{path.name}: expected NN_topic.ipynb (lowercase, underscores)"
    nb = _load(path)
    assert nb.get("nbformat") == 4, f"{path.name}: nbformat {nb.get('nbformat')}, expected 4"
    kernelspec = nb.get("metadata", {}).get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{path.name}: kernelspec {kernelspec}"
    assert kernelspec.get("language", "python") == "python"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).lstrip().startswith("# "), (
        f"{path.name}: the first cell must be a markdown title ('# NN · Topic')"
    )
    showed = [c for c in nb["cells"] if c["cell_type"] == "markdown" and "what we showed" in _source(c).lower()]
    assert showed, f'{path.name}: needs a closing "What we showed" section'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_typed_commented_defaults(path):
    cells = _load(path)["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and "parameters" in _tags(code[0]), f"{path.name}: the first code cell must be tagged 'parameters'"
    assert sum("parameters" in _tags(c) for c in cells) == 1, f"{path.name}: one 'parameters' cell only"
    source = _source(code[0])
    tree = ast.parse(source)
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None, (
            f"{path.name}: parameters cell line {node.lineno} is not `name: type = default`: "
            f"{ast.get_source_segment(source, node)!r}"
        )
    params = parse_parameter_cell(source, path.name)
    assert params.get("results_dir", {}).get("type") == "str" and params["results_dir"]["default"] in ('""', "''"), (
        f'{path.name}: needs `results_dir: str = ""  # where figures/tables are written`'
    )
    for name, p in params.items():
        assert p["help"], f"{path.name}: parameter {name!r} needs a comment saying what it is"
        if p["type"] in SIMPLE_TYPES:
            default = ast.literal_eval(p["default"])
            ok = isinstance(default, SIMPLE_TYPES[p["type"]]) and not (
                p["type"] in ("int", "float") and isinstance(default, bool)
            )
            assert ok, f"{path.name}: {name}: {p['type']} = {p['default']} (default does not match the type)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped_except_checked_cells(path):
    for index, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        keep = "keep_output" in _tags(cell)
        marked = any(line.strip() == CHECK_MARKER for line in _source(cell).splitlines())
        where = f"{path.name} cell {index}"
        assert keep == marked, (
            f"{where}: a cell tagged keep_output must contain the line {CHECK_MARKER!r} and vice versa "
            f"(tagged: {keep}, marked: {marked})"
        )
        if not keep:
            assert cell.get("outputs") == [], (
                f"{where}: has outputs; strip them with `nbstripout --keep-count {path.relative_to(REPO)}`"
            )
            continue
        outputs = cell.get("outputs", [])
        assert outputs, f"{where}: keep_output cell has no stored output for nbval to compare"
        for out in outputs:
            kind = out.get("output_type")
            assert kind in ("stream", "execute_result"), f"{where}: stored {kind} output"
            if kind == "stream":
                assert out.get("name") == "stdout", f"{where}: stored {out.get('name')} output"
            else:
                assert set(out.get("data", {})) == {"text/plain"}, f"{where}: stored non-text output"


def test_parameter_parser_reads_the_conventional_line():
    # papermill's own regex drops this line (a second '=' in the comment); ours must not.
    params = parse_parameter_cell(
        'epochs: int = 1  # passes over the data\n'
        'results_dir: str = ""  # where figures/tables are written; "" = write nothing (nbval runs)\n'
    )
    assert params == {
        "epochs": {"type": "int", "default": "1", "help": "passes over the data"},
        "results_dir": {
            "type": "str",
            "default": '""',
            "help": 'where figures/tables are written; "" = write nothing (nbval runs)',
        },
    }
    with pytest.raises(ValueError, match="not plain Python"):
        parse_parameter_cell("%matplotlib inline\nx: int = 1  # x")


# ----------------------------------------------------------------------------- reproduction notebooks
REPRODUCTION = [p for p in NOTEBOOKS if p.name[:2].isdigit() and 10 <= int(p.name[:2]) <= 19]
MAX_CELL_LINES = 30  # a cell reads as one step of the argument; support code lives in svdlib.experiments
MAX_FUNCTION_LINES = 12  # local wrappers only: helpers belong in tested modules


@pytest.mark.parametrize("path", REPRODUCTION, ids=lambda p: p.name)
def test_reproduction_cells_are_short_and_import_their_support_code(path):
    for index, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        lines = [line for line in source.splitlines() if line.strip()]
        assert len(lines) <= MAX_CELL_LINES, f"{path.name} cell {index}: {len(lines)} lines > {MAX_CELL_LINES}"
        assert "sys.path" not in source, f"{path.name} cell {index}: imports through sys.path"
        # one statistics module (svdlib.experiments.stats): no test is computed in a notebook
        assert not re.search(r"\bttest_|scipy\.stats|fisher_exact", source), f"{path.name} cell {index}"
        tree = ast.parse(source.replace("display(", "print("))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                length = node.end_lineno - node.lineno + 1
                assert isinstance(node, ast.FunctionDef) and length <= MAX_FUNCTION_LINES, (
                    f"{path.name} cell {index}: {type(node).__name__} {node.name} ({length} lines) belongs in a module")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_calls_a_toy_or_quick_result_reproduced(path):
    for index, cell in enumerate(_load(path)["cells"]):
        text = _source(cell) + "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        assert not re.search(r"\bNOT reproduced\b|['\"]reproduced['\"]", text), (
            f"{path.name} cell {index}: verdicts use svdlib.experiments.stats.VERDICTS, toy results are labelled as such")

"""Execute notebooks with papermill: one notebook, or the numbered suite (``make reproduce``).

A notebook ``notebooks/03_pade.ipynb`` run into ``results/`` leaves::

    results/03_pade.ipynb          the executed notebook, written only once every cell ran
    results/03_pade.run.json       parameters, timings, versions and status of the run
    results/03_pade/               figures and tables: the path injected as ``results_dir``
    results/03_pade.failed.ipynb   on failure only: the notebook as far as it ran, traceback included

Parameters follow the notebook conventions: the cell tagged ``parameters`` holds typed
defaults (``epochs: int = 1  # comment``) and always declares ``results_dir``. The runner
injects ``results_dir`` itself, refuses parameters a notebook does not declare (a typo would
otherwise run the defaults silently), converts command-line strings to the declared type, and
never overwrites a finished run unless asked (``overwrite=True``, ``--force``).

Command line (what ``make reproduce`` calls)::

    python -m svdlib.experiments.notebook                      # every notebooks/NN_*.ipynb
    python -m svdlib.experiments.notebook --only 00 03 -p epochs 3 -f configs/x.yaml
    python -m svdlib.experiments.notebook --list               # notebooks and their parameters

papermill and jupyter_client come with the ``notebooks`` extra and are imported only when a
notebook is run; listing and validating parameters needs neither.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import datetime as _dt
import glob
import hashlib
import io
import json
import math
import numbers
import os
import platform
import sys
import threading
import time
import tokenize
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json

__all__ = [
    "DEFAULT_PATTERN",
    "NotebookExecutionError",
    "NotebookRun",
    "notebook_parameters",
    "parse_parameter_cell",
    "find_notebooks",
    "run_notebook",
    "run_suite",
    "main",
]

DEFAULT_PATTERN = "notebooks/[0-9][0-9]_*.ipynb"
_INSTALL_HINT = "pip install 'svdlib[notebooks]' (or run `make reproduce`, which installs it)"
_PAPERMILL_TAGS = ("injected-parameters", "papermill-error-cell-tag")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


class NotebookExecutionError(RuntimeError):
    """A notebook cell raised, timed out or killed its kernel.

    Attributes
    ----------
    notebook : Path
        The source notebook.
    cell_index : int or None
        Index of the failing cell in the *source* notebook (0-based, markdown cells counted,
        the cell papermill injects not counted); None when it could not be located.
    execution_count : int or None
        The ``In [n]`` number shown in the executed notebook.
    ename, evalue : str
        Exception name and message raised in the kernel.
    source : str
        Source of the failing cell.
    output : Path or None
        The partially executed notebook with the full traceback (``NN_name.failed.ipynb``).
    """

    def __init__(self, notebook, cell_index, execution_count, ename, evalue, source, output, *,
                 location=None, timeout=None):
        self.notebook = Path(notebook)
        self.cell_index = cell_index
        self.execution_count = execution_count
        self.ename = ename
        self.evalue = evalue
        self.source = source
        self.output = None if output is None else Path(output)
        where = location or ("an unknown cell" if cell_index is None else f"cell {cell_index}")
        if execution_count is not None:
            where += f" (In [{execution_count}])"
        if timeout is not None:  # the seconds requested; the cell timed out
            limit = f"{_execution_timeout(timeout)} s"
            if _execution_timeout(timeout) != timeout:
                limit += f" ({timeout:g} s requested; nbclient counts whole seconds)"
            lines = [f"{self.notebook} timed out in {where}: it ran longer than the per-cell "
                     f"timeout of {limit} ({ename})"]
        else:
            lines = [f"{self.notebook} failed in {where}: {ename}: {evalue}".rstrip(": ")]
        if source:
            src = source.splitlines()
            shown = "\n".join("    " + s for s in src[:12])
            more = f"\n    ... ({len(src) - 12} more lines)" if len(src) > 12 else ""
            lines.append(f"  cell source:\n{shown}{more}")
        if self.output is not None:
            lines.append(f"  executed notebook with the full traceback: {self.output}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class NotebookRun:
    """Outcome of one notebook: ``status`` is ``"ok"`` (ran now) or ``"skipped"`` (finished before)."""

    notebook: Path
    output: Path
    results_dir: Path
    status: str
    seconds: float
    parameters: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- parameters
def notebook_parameters(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Parameters declared in the notebook's ``parameters`` cell (the first cell so tagged).

    Returns ``{name: {"type": "int", "default": "1", "help": "comment"}}`` in declaration
    order: ``type`` is the annotation as written (``"None"`` when absent), ``default`` the
    source text of the value, ``help`` the comment at the end of the line. Parsed with
    :mod:`ast` rather than papermill's line regex, which drops a parameter whose comment
    contains ``=`` (e.g. ``results_dir: str = ""  # "" = write nothing``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not a notebook (invalid JSON: {exc})") from None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return parse_parameter_cell("".join(src) if isinstance(src, list) else src, str(path))
    return {}


def parse_parameter_cell(source: str, where: str = "parameters cell") -> dict[str, dict[str, Any]]:
    """Parse the source of a ``parameters`` cell; see :func:`notebook_parameters`.

    Only assignments to plain names count as parameters (``x: int = 1`` or ``x = 1``);
    anything that is not valid Python (an IPython magic, say) is an error naming ``where``.
    """
    try:
        tree = ast.parse(source)
        comments = {
            tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
    except (SyntaxError, tokenize.TokenError) as exc:
        raise ValueError(f"{where}: the parameters cell is not plain Python ({exc})") from None
    params: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, node.annotation, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        params[name] = {
            "type": "None" if annotation is None else ast.get_source_segment(source, annotation),
            "default": None if value is None else ast.get_source_segment(source, value),
            "help": comments.get(node.end_lineno, ""),
        }
    return params


def _coerce(name: str, value: Any, type_name: str, notebook: Path) -> Any:
    """Convert a string given on the command line to the type the notebook declares."""
    if not isinstance(value, str):
        return value
    t = (type_name or "None").replace(" ", "")
    try:
        if t == "str":
            return value
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(value)
    except ValueError:
        raise ValueError(
            f"parameter {name!r} of {notebook.name} is declared as {t}; "
            f"cannot convert the value {value!r}"
        ) from None
    # Unannotated, Optional, list...: read it as YAML ("3" -> 3, "[1, 2]" -> [1, 2]).
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _load_config(config: str | os.PathLike | Mapping | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    from .config import parse_yaml_file

    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config: no such parameter file {path}")
    data = parse_yaml_file(path, "parameter file")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config: {path} must hold a mapping of parameter names to values, "
            f"got a {type(data).__name__}"
        )
    return dict(data)


def _resolve_parameters(
    notebook: Path, declared: Mapping[str, Mapping], values: Mapping[str, Any]
) -> dict[str, Any]:
    if "results_dir" not in declared:
        raise ValueError(
            f"{notebook} declares no `results_dir` parameter; every notebook's parameters cell "
            'needs `results_dir: str = ""  # where figures/tables are written` '
            "(see the notebook conventions in README.md)"
        )
    if "results_dir" in values:
        raise ValueError(
            "parameters: results_dir is set by the runner (out_dir/<notebook name>); "
            f"got results_dir={values['results_dir']!r}"
        )
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(
            f"parameters: {notebook.name} does not declare {unknown}; "
            f"it declares {sorted(declared)}"
        )
    return {k: _coerce(k, v, declared[k]["type"], notebook) for k, v in values.items()}


# ----------------------------------------------------------------------------- records
def _source_digest(notebook: Path) -> str:
    """Hash of the cell sources only, so re-stripping outputs does not look like an edit."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        h.update(("".join(src) if isinstance(src, list) else src).encode())
        h.update(b"\0")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _write_json_atomic(path: Path, data: Mapping) -> None:
    write_json(path, _jsonable(data), sort_keys=True)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _paths(notebook: Path, out_dir: Path) -> dict[str, Path]:
    stem = notebook.stem
    return {
        "output": out_dir / f"{stem}.ipynb",
        "record": out_dir / f"{stem}.run.json",
        "failed": out_dir / f"{stem}.failed.ipynb",
        "partial": out_dir / f".{stem}.partial.ipynb",
        "results_dir": out_dir / stem,
    }


def _finished(paths: Mapping[str, Path]) -> dict | None:
    rec = _read_record(paths["record"])
    if rec and rec.get("status") == "ok" and paths["output"].is_file():
        return rec
    return None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("svdlib", "torch", "numpy", "papermill"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if "svdlib" not in out:  # a checkout on sys.path, not installed
        import svdlib

        out["svdlib"] = getattr(svdlib, "__version__", "unknown")
    return out


# ----------------------------------------------------------------------------- execution
#: matplotlib's inline backend: figures become PNG outputs of the cell, no display needed.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


_ENV_LOCK = threading.Lock()
_ENV_USERS: dict[tuple, list] = {}  # (name, value) -> [count, value before]


@contextlib.contextmanager
def _kernel_environment(**values: str | None):
    """Set environment variables for the kernels papermill starts (each copies ``os.environ``);
    None leaves a variable as it is. Restored when the last concurrent user leaves (the suite
    may run several notebooks at once, all asking for the same values)."""
    wanted = [(k, v) for k, v in values.items() if v is not None]
    with _ENV_LOCK:
        for k, v in wanted:
            entry = _ENV_USERS.setdefault((k, v), [0, os.environ.get(k)])
            entry[0] += 1
            os.environ[k] = v
    try:
        yield
    finally:
        with _ENV_LOCK:
            for k, v in wanted:
                entry = _ENV_USERS[(k, v)]
                entry[0] -= 1
                if entry[0] == 0:
                    del _ENV_USERS[(k, v)]
                    if entry[1] is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = entry[1]


def _import_papermill():
    try:
        import papermill
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"running notebooks needs papermill: {_INSTALL_HINT}") from exc
    return papermill


def _check_kernel(kernel: str) -> None:
    """Fail early on a missing kernel; warn when it would run another interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ValueError(
            f"kernel: no Jupyter kernel named {kernel!r}; install ipykernel in this "
            f"environment ({_INSTALL_HINT})"
        ) from None
    exe = spec.argv[0] if spec.argv else ""
    # jupyter_client runs "python"/"python3"/"python3.X" with the current interpreter.
    major, minor = sys.version_info[:2]
    if exe in {"python", f"python{major}", f"python{major}.{minor}"} or spec.language != "python":
        return
    if os.path.abspath(exe) != os.path.abspath(sys.executable):
        warnings.warn(
            f"kernel {kernel!r} runs {exe}, not this interpreter ({sys.executable}); the "
            "notebook may not see this environment's svdlib. Fix with: "
            f"{sys.executable} -m ipykernel install --sys-prefix --name {kernel}",
            RuntimeWarning,
            stacklevel=3,
        )


def _execution_timeout(timeout: float | None) -> int | None:
    """The per-cell timeout nbclient gets: whole seconds, a fraction rounded up (0.5 -> 1)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) \
            or not math.isfinite(timeout) or not timeout > 0:
        raise ValueError(f"timeout must be None or a number of seconds > 0, got {timeout!r}")
    return math.ceil(timeout)


def _locate_failure(executed: Path | None) -> tuple[int | None, int | None, str, str, str, str | None]:
    """(source cell index, execution count, ename, evalue, source, location) of the first
    failed cell; ``location`` describes a failing cell that papermill injected (index None)."""
    if executed is None:
        return None, None, "", "", "", None
    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None, "", "", "", None
    index = -1
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        pm_meta = meta.get("papermill", {})
        failed = pm_meta.get("exception") or pm_meta.get("status") == "running"
        errors = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        if any(t in meta.get("tags", []) for t in _PAPERMILL_TAGS):
            if failed or errors:  # before any notebook cell ran (e.g. a tiny timeout)
                error = errors[0] if errors else {}
                where = f"the parameters cell injected by papermill (after cell {index})"
                return (None, cell.get("execution_count"), error.get("ename", ""),
                        error.get("evalue", ""), src, where)
            continue
        index += 1
        if errors:
            return index, cell.get("execution_count"), errors[0].get("ename", ""), \
                errors[0].get("evalue", ""), src, None
        if failed:
            return index, cell.get("execution_count"), "", "", src, None
    return None, None, "", "", "", None


def run_notebook(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    kernel: str = "python3",
    timeout: float | None = 3600,
    *,
    overwrite: bool = False,
    start_timeout: float = 120,
    log_output: bool = False,
    inline_figures: bool = True,
) -> NotebookRun:
    """Execute one notebook with papermill and write it, with its results, under ``out_dir``.

    Parameters
    ----------
    path : path-like
        The notebook to run (``notebooks/NN_name.ipynb``).
    out_dir : path-like
        Results root: the executed notebook becomes ``out_dir/NN_name.ipynb`` and the
        notebook's ``results_dir`` parameter is set to the absolute ``out_dir/NN_name/``.
    parameters : mapping, optional
        Parameter values; each must be declared in the notebook's ``parameters`` cell.
        Strings are converted to the declared type (``"3"`` -> 3 for ``epochs: int``).
    config : path-like or mapping, optional
        A YAML file (or a mapping) of parameters, applied before ``parameters``.
    kernel : str
        Jupyter kernel name; ``"python3"`` runs this interpreter when ipykernel is installed.
    timeout : float or None
        Seconds allowed per cell (None: no limit); nbclient counts whole seconds, so a fraction
        is rounded up (0.5 -> 1 s).
    overwrite : bool
        Re-run even if ``out_dir`` already holds a finished run of this notebook (files the
        earlier run left in its ``results_dir`` stay unless the notebook rewrites them).
    start_timeout : float
        Seconds allowed for the kernel to start.
    log_output : bool
        Echo the cells' output to this process's log while running.
    inline_figures : bool
        Run the kernel with matplotlib's inline backend, whatever ``MPLBACKEND`` says here (``make``
        exports ``Agg`` so that tests stay headless), so the executed notebook carries its figures
        as PNG outputs. The inline backend needs no display. False: the kernel inherits ``MPLBACKEND``.

    Returns
    -------
    NotebookRun
        ``status == "ok"``, the executed notebook path and the wall time.

    Raises
    ------
    NotebookExecutionError
        A cell raised or timed out; the message names the cell index, its ``In [n]``, the
        error, the cell source and the ``.failed.ipynb`` holding the traceback.
    FileExistsError
        A finished run is already there and ``overwrite`` is False.
    ValueError
        An undeclared parameter, an unconvertible value, no ``results_dir`` declared.
    """
    # absolute: papermill changes this process's working directory while a notebook runs, and
    # the suite may run several at once
    notebook = Path(path).expanduser().resolve()
    cell_timeout = _execution_timeout(timeout)
    declared = notebook_parameters(notebook)
    values = _load_config(config)
    values.update(parameters or {})
    values = _resolve_parameters(notebook, declared, values)

    out_dir = Path(out_dir).expanduser().resolve()
    paths = _paths(notebook, out_dir)
    done = _finished(paths)
    if done is not None and not overwrite:
        raise FileExistsError(
            f"{paths['output']} is a finished run (parameters {done.get('parameters')}); "
            "pass overwrite=True (--force) to run it again, or choose another results folder"
        )

    pm = _import_papermill()
    _check_kernel(kernel)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["results_dir"].mkdir(parents=True, exist_ok=True)
    injected = {**values, "results_dir": str(paths["results_dir"])}
    record = {
        "notebook": str(notebook),
        "source_sha256": _source_digest(notebook),
        "parameters": values,
        "results_dir": str(paths["results_dir"]),
        "kernel": kernel,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "status": "running",
    }
    _write_json_atomic(paths["record"], record)
    for stale in (paths["output"], paths["failed"], paths["partial"]):
        stale.unlink(missing_ok=True)

    t0 = time.perf_counter()
    try:
        with _kernel_environment(MPLBACKEND=INLINE_BACKEND if inline_figures else None):
            pm.execute_notebook(
                str(notebook),
                str(paths["partial"]),
                parameters=injected,
                kernel_name=kernel,
                progress_bar=False,
                log_output=log_output,
                cwd=str(notebook.resolve().parent),
                start_timeout=start_timeout,
                execution_timeout=cell_timeout,
            )
    except BaseException as exc:
        seconds = time.perf_counter() - t0
        failed = None
        if paths["partial"].is_file():
            os.replace(paths["partial"], paths["failed"])
            failed = paths["failed"]
        if isinstance(exc, KeyboardInterrupt):
            _write_json_atomic(paths["record"], {**record, "status": "interrupted", "seconds": seconds})
            raise
        index, count, ename, evalue, source, where = _locate_failure(failed)
        if isinstance(exc, pm.PapermillExecutionError):
            ename, evalue = ename or exc.ename, evalue or exc.evalue
            source = source or exc.source
        else:  # timeout, dead kernel, kernel failed to start...
            message = str(exc).strip()
            ename = type(exc).__name__
            evalue = message.splitlines()[0] if message else ""
        timed_out = isinstance(exc, TimeoutError) and timeout is not None
        error = NotebookExecutionError(notebook, index, count, ename, evalue, source, failed,
                                       location=where, timeout=timeout if timed_out else None)
        _write_json_atomic(
            paths["record"],
            {**record, "status": "failed", "seconds": seconds, "error": str(error)},
        )
        raise error from exc

    seconds = time.perf_counter() - t0
    os.replace(paths["partial"], paths["output"])
    _write_json_atomic(paths["record"], {**record, "status": "ok", "seconds": round(seconds, 3)})
    return NotebookRun(notebook, paths["output"], paths["results_dir"], "ok", seconds, values)


# ----------------------------------------------------------------------------- suite
def find_notebooks(
    pattern: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_PATTERN,
    only: Iterable[str] | None = None,
) -> list[Path]:
    """Notebooks matching ``pattern``, sorted.

    ``pattern`` is a glob, a folder (its ``NN_*.ipynb``) or a list of notebook files (kept
    in the given order; each must exist). ``only`` keeps the notebooks whose name starts
    with one of its entries (``"00"``, ``"03_pade"``); an entry that selects nothing is an error.
    """
    if isinstance(pattern, (list, tuple)):
        found = [Path(p).expanduser() for p in pattern]
        for p in found:
            if not p.is_file():
                raise FileNotFoundError(f"notebook not found: {p}")
    else:
        pattern = os.fspath(pattern)
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "[0-9][0-9]_*.ipynb")
        found = sorted(
            Path(p) for p in glob.glob(os.path.expanduser(pattern)) if ".ipynb_checkpoints" not in p
        )
    if only:
        only = [str(o) for o in only]
        missing = [o for o in only if not any(p.stem.startswith(o) for p in found)]
        if missing:
            raise ValueError(
                f"only: {missing} match no notebook in {pattern!r}; "
                f"available: {[p.stem for p in found]}"
            )
        found = [p for p in found if any(p.stem.startswith(o) for o in only)]
    return found


def run_suite(
    pattern: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_PATTERN,
    results_root: str | os.PathLike = "results",
    parameters: Mapping[str, Any] | None = None,
    skip_finished: bool = True,
    *,
    only: Iterable[str] | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    if_declared: Mapping[str, Any] | None = None,
    kernel: str = "python3",
    timeout: float | None = 3600,
    keep_going: bool = False,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> list[NotebookRun]:
    """Run every notebook matching ``pattern`` in order, into ``results_root``.

    Parameters
    ----------
    pattern, only
        Which notebooks: a glob, a folder or a list of files (see :func:`find_notebooks`).
    results_root : path-like
        Results root shared by all notebooks (layout in the module docstring).
    parameters, config
        Values given to each notebook that declares them; a key that no selected notebook
        declares is an error (it is a typo, or the wrong notebook). ``parameters`` wins.
    skip_finished : bool
        Skip a notebook whose finished run used the same parameters and the same cell
        sources. A finished run with *other* parameters is an error (results would be mixed
        up); False re-runs everything, overwriting.
    if_declared : mapping, optional
        Suite-wide values (``profile``, ``data_root``) given only to notebooks that declare
        them, silently ignored by the others. ``results_root`` is always given to the
        notebooks that declare it; those aggregate the suite's results and are never skipped.
    kernel, timeout
        As in :func:`run_notebook`.
    keep_going : bool
        Run the remaining notebooks after a failure, then raise the first failure.
    log : callable, optional
        Receives one progress line per event (default: print to stderr).
    jobs : int
        Notebooks executed at the same time, each in its own kernel (the notebooks that
        aggregate the others' results run after all of them). 2 uses both cores of a 2-core
        machine: the reproduction notebooks train on one thread each.

    Returns
    -------
    list of NotebookRun
    """
    lock = threading.Lock()  # one line at a time when notebooks run side by side

    def say(msg: str) -> None:
        with lock:
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    _execution_timeout(timeout)  # checked before any notebook runs
    notebooks = [nb.resolve() for nb in find_notebooks(pattern, only)]  # absolute: see run_notebook
    if not notebooks:
        raise ValueError(f"pattern: no notebook matches {pattern!r}")
    strict = _load_config(config)
    strict.update(parameters or {})
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    orphans = sorted(k for k in strict if not any(k in d for d in declared.values()))
    if orphans:
        raise ValueError(
            f"parameters: {orphans} are declared by none of {[nb.stem for nb in notebooks]}"
        )
    results_root = Path(results_root).expanduser().resolve()
    # A notebook that declares `results_root` aggregates the others' results (16_summary):
    # it is told where they are, and it runs again every time, since its inputs change.
    if_declared = {"results_root": str(results_root), **(if_declared or {})}
    runs: list[NotebookRun] = []
    failures: list[NotebookExecutionError] = []
    planned: list[tuple[Path, dict, bool]] = []  # (notebook, parameters, aggregator)
    for nb in notebooks:
        values = {k: v for k, v in (if_declared or {}).items() if k in declared[nb]}
        values.update({k: v for k, v in strict.items() if k in declared[nb]})
        resolved = _resolve_parameters(nb, declared[nb], values)
        paths = _paths(nb, results_root)
        done = _finished(paths)
        aggregator = "results_root" in declared[nb]
        if done is not None and skip_finished and not aggregator:
            stale = done.get("source_sha256") != _source_digest(nb)
            if not stale and done.get("parameters") == _jsonable(resolved):
                say(f"[{nb.stem}] skipped: finished before ({paths['output']})")
                runs.append(NotebookRun(nb, paths["output"], paths["results_dir"], "skipped", 0.0, resolved))
                continue
            if not stale:
                raise FileExistsError(
                    f"{paths['output']} finished with parameters {done.get('parameters')}, "
                    f"now asked for {_jsonable(resolved)}: use another results folder "
                    "(--results, RESULTS=) or re-run with --force (FORCE=1)"
                )
            say(f"[{nb.stem}] the notebook changed since its finished run: running again")
        planned.append((nb, resolved, aggregator))

    def execute(item) -> NotebookRun | NotebookExecutionError:
        nb, resolved, _ = item
        shown = ", ".join(f"{k}={v!r}" for k, v in resolved.items())
        say(f"[{nb.stem}] running{f' ({shown})' if shown else ''} ...")
        try:
            run = run_notebook(nb, results_root, resolved, kernel=kernel, timeout=timeout, overwrite=True)
        except NotebookExecutionError as err:
            say(f"[{nb.stem}] FAILED\n{err}")
            return err
        say(f"[{nb.stem}] ok in {run.seconds:.1f} s -> {run.output}")
        return run

    # Aggregators (16_summary) read the others' results: they run last, after every other one.
    stages = [[p for p in planned if not p[2]], [p for p in planned if p[2]]]
    here = os.getcwd()  # papermill's per-run chdir is process-wide: concurrent runs can leave it moved
    try:
        _run_stages(stages, execute, jobs, keep_going, runs, failures)
    finally:
        os.chdir(here)
    ran = sum(r.status == "ok" for r in runs)
    skipped = len(runs) - ran
    say(f"notebooks: {ran} ran, {skipped} skipped, {len(failures)} failed; results in {results_root}")
    if failures:
        raise failures[0]
    return runs


def _run_stages(stages, execute, jobs, keep_going, runs, failures) -> None:
    """Run each stage's notebooks (``jobs`` at a time), appending to ``runs`` / ``failures``."""
    for stage in stages:
        if jobs > 1 and len(stage) > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                pending = [pool.submit(execute, item) for item in stage]
                outcomes = []
                for future in pending:  # in notebook order
                    outcomes.append(future.result())
                    if isinstance(outcomes[-1], NotebookExecutionError) and not keep_going:
                        for other in pending:
                            other.cancel()
                        break
        else:
            outcomes = []
            for item in stage:
                outcomes.append(execute(item))
                if isinstance(outcomes[-1], NotebookExecutionError) and not keep_going:
                    break
        for outcome in outcomes:
            if isinstance(outcome, NotebookExecutionError):
                if not keep_going:
                    raise outcome
                failures.append(outcome)
            else:
                runs.append(outcome)


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svdlib.experiments.notebook",
        description="Execute svdlib's numbered notebooks with papermill into a results folder.",
    )
    p.add_argument("notebooks", nargs="*", help="notebook files to run (default: the suite)")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help="glob of the suite (default: %(default)s)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only notebooks whose name starts with these")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="notebook parameter, converted to its declared type (repeatable)")
    p.add_argument("-f", "--config", metavar="YAML", help="YAML file of notebook parameters")
    p.add_argument("--results", default="results", help="results folder (default: %(default)s)")
    p.add_argument("--profile", help="value of `profile` for notebooks that declare it")
    p.add_argument("--data-root", help="value of `data_root` for notebooks that declare it")
    p.add_argument("--force", action="store_true", help="re-run notebooks that already finished")
    p.add_argument("--keep-going", action="store_true", help="go on after a failing notebook")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run at the same time (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds per cell, fractions rounded up (default: %(default)s)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 misuse)."""
    args = _parser().parse_args(argv)
    if_declared = {}
    if args.profile is not None:
        if_declared["profile"] = args.profile
    if args.data_root is not None:
        if_declared["data_root"] = os.path.abspath(os.path.expanduser(args.data_root))
    parameters = dict(args.parameter)
    try:
        selection = list(args.notebooks) or args.pattern
        notebooks = find_notebooks(selection, args.only)
        if args.list:
            for nb in notebooks:
                print(nb)
                for name, p in notebook_parameters(nb).items():
                    helptext = f"  # {p['help']}" if p["help"] else ""
                    print(f"    {name}: {p['type']} = {p['default']}{helptext}")
            return 0
        run_suite(
            selection,
            args.results,
            parameters,
            skip_finished=not args.force,
            only=args.only,
            config=args.config,
            if_declared=if_declared,
            kernel=args.kernel,
            timeout=args.timeout,
            keep_going=args.keep_going,
            jobs=args.jobs,
        )
    except NotebookExecutionError:
        return 1  # already reported by run_suite's log
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

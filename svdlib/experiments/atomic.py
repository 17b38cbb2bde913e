"""Write files so that a reader never sees half of one: the one atomic writer of the harness.

Every file the harness and the notebooks write (``summary.json``, ``report.json``, run records,
tables, ``SUMMARY.md``, checkpoints) goes through :func:`write_atomic`: the bytes go to a
temporary file in the target's folder, are flushed to disk, and the temporary file is renamed over
the target (``os.replace``, atomic on POSIX and Windows). An interrupted write leaves the old file
or none.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Sequence

__all__ = ["write_atomic", "fsync_directory", "write_json", "write_csv", "jsonable"]


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], Any]) -> Path:
    """Write ``data`` to ``path`` atomically and durably; creates missing folders.

    ``data`` is text (written as UTF-8), bytes, or a function that writes into the open binary
    file (``lambda fh: torch.save(state, fh)``). The temporary file is ``.NAME.<random>.tmp`` in
    the target's folder; it is flushed to disk, renamed over ``path`` and the folder entry is
    flushed too, so neither a crash nor a power cut leaves a truncated file.
    """
    path = Path(path)
    if not isinstance(data, (str, bytes)) and not callable(data):
        raise TypeError(f"data must be str, bytes or a writer function, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where the OS cannot open directories."""
    if os.name != "posix":
        return
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def jsonable(value: Any, finite: bool = False) -> Any:
    """A JSON-ready copy: numpy/torch scalars to Python numbers, tuples to lists, keys to str.

    With ``finite=True`` NaN and infinities become None (strict JSON); otherwise they stay
    (Python's ``json`` writes ``NaN``/``Infinity``, which it reads back).
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, finite) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False,
               finite: bool = False, default=None) -> Path:
    """Write ``obj`` as JSON atomically (see :func:`jsonable` for ``finite``); returns the path."""
    text = json.dumps(jsonable(obj, finite), indent=indent, sort_keys=sort_keys,
                      allow_nan=not finite, default=default)
    return write_atomic(path, text + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically; ``columns`` default to the keys of the first row.

    None becomes an empty cell; keys a row lacks are empty; keys not in ``columns`` are errors.
    """
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in jsonable(dict(row)).items()})
    return write_atomic(path, buf.getvalue())

"""One report format for every reproduction notebook (10-16), read back by notebook 16.

Each notebook writes ``<results_dir>/report.json``::

    {"notebook": "10_decorrelated_bn", "profile": "quick",
     "scale": "digits 16x16, ResNet width 16, 2 epochs, 2 seeds, CPU",
     "rows":   [{"table": "ECCV22 Table 4", "row": "SVD + NOG", "metric": "CIFAR100 error (%)",
                 "paper": 19.43, "ours": 11.2, "ours_std": 0.4, "ours_metric": "digits error (%)"}],
     "claims": [{"claim": "NOG lowers the error of plain SVD", "source": "ECCV22 Table 4",
                 "paper_holds": true, "ours_holds": false, "evidence": "11.2 vs 10.9 (2 seeds)"}]}

``ours_holds`` is True / False, or None when our run cannot decide (e.g. differences within
noise). Notebook 16 never compares a quick-profile number with a paper number as if they were
the same experiment: it prints the profile and scale beside every value.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["write_report", "load_reports", "REPORT_FILE"]

REPORT_FILE = "report.json"
_ROW_KEYS = {"table", "row", "metric", "paper", "ours"}
_CLAIM_KEYS = {"claim", "source", "paper_holds", "ours_holds", "evidence"}
PROFILES = ("quick", "paper")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(results_dir: str | os.PathLike, notebook: str, profile: str, scale: str,
                 rows: list[dict], claims: list[dict]) -> Path | None:
    """Validate and atomically write ``report.json``; returns its path (None if results_dir is "")."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    for i, row in enumerate(rows):
        missing = _ROW_KEYS - set(row)
        if missing:
            raise ValueError(f"report row {i} lacks keys {sorted(missing)}: {row}")
    for i, claim in enumerate(claims):
        missing = _CLAIM_KEYS - set(claim)
        if missing:
            raise ValueError(f"report claim {i} lacks keys {sorted(missing)}: {claim}")
        if claim["ours_holds"] not in (True, False, None):
            raise ValueError(f"claim {i}: ours_holds must be True, False or None, got {claim['ours_holds']!r}")
    if not results_dir:
        return None
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = _clean({"notebook": notebook, "profile": profile, "scale": scale, "rows": rows, "claims": claims})
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, allow_nan=False)
    path = out / REPORT_FILE
    os.replace(tmp, path)
    return path


def load_reports(results_root: str | os.PathLike) -> list[dict]:
    """Every ``report.json`` one or two folders below ``results_root``, sorted by notebook."""
    root = Path(results_root)
    paths = sorted(set(root.glob(f"*/{REPORT_FILE}")) | set(root.glob(REPORT_FILE)))
    reports = []
    for path in paths:
        with open(path) as fh:
            report = json.load(fh)
        report["path"] = str(path)
        reports.append(report)
    return sorted(reports, key=lambda r: r["notebook"])

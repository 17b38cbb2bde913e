"""The papers' published numbers, stored as data (CSV files beside this module).

Each file's first line (a ``#`` comment) names the paper and the table it comes from. The
reproduction notebooks put our numbers beside these, labelled with the profile they ran at.
"""
from __future__ import annotations

import csv
import io
from importlib import resources

__all__ = ["PAPER_TABLES", "paper_table", "paper_source"]

PAPER_TABLES = {
    "decorrelated_bn": "eccv22_table4_decorrelated_bn.csv",
    "decorrelated_bn_extra": "eccv22_tables1to3_cifar100_extra.csv",
    "gcp": "eccv22_table5_gcp.csv",
    "timing": "eccv22_table6_timing.csv",
    "zca_stability": "tpami_table4_zca_cifar10.csv",
    "style_transfer": "tpami_table9_sharpness.csv",
}


def _read(name: str) -> tuple[str, list[dict]]:
    if name not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {name!r}; expected one of {sorted(PAPER_TABLES)}")
    text = resources.files(__package__).joinpath("paper_numbers", PAPER_TABLES[name]).read_text()
    source, _, body = text.partition("\n")
    rows = []
    for row in csv.DictReader(io.StringIO(body)):
        rows.append({k: _number(v) for k, v in row.items()})
    return source.lstrip("# ").strip(), rows


def _number(value: str):
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def paper_table(name: str) -> list[dict]:
    """Rows of a published table as dicts (numbers as floats, missing values as None)."""
    return _read(name)[1]


def paper_source(name: str) -> str:
    """The citation line (paper, table) of a stored table."""
    return _read(name)[0]

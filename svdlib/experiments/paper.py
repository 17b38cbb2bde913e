"""The papers' published numbers, stored as data (CSV files beside this module).

Each file's first line (a ``#`` comment) names the paper and the table it comes from. The
reproduction notebooks put our numbers beside these, labelled with the profile they ran at.
"""
from __future__ import annotations

import csv
import io
from importlib import resources

__all__ = ["PAPER_TABLES", "paper_table", "paper_source", "row_for", "label_for"]

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


def _row_key(cfg, name: str):
    """What identifies a configuration in a table: its treatments (ECCV), its backward (TPAMI)."""
    if name == "zca_stability":
        if cfg.kind == "bn":
            return None
        return "power_iteration_forward" if cfg.solver == "power_iteration_forward" else cfg.backward
    if cfg.method == "newton_schulz":
        return frozenset({"newton_schulz"})
    if cfg.backward != "taylor":  # the ECCV rows all back-propagate with the Taylor remedy
        return None
    return frozenset(cfg.treatments)


def row_for(cfg, tables, d: int | None = None) -> dict | None:
    """The published row a configuration reproduces, with ``"table"`` (its source) added, or None.

    ``tables``: stored table names to search, in order (``("decorrelated_bn",
    "decorrelated_bn_extra")``, ``("gcp",)``, ``("zca_stability",)``). ECCV rows are matched by
    the set of treatments (``newton_schulz`` for the iteration), TPAMI Table IV rows by backward
    (``power_iteration_forward`` for PI) and group dimension ``d``. Configurations the paper
    does not have (another backward, BatchNorm) give None.
    """
    for name in (tables,) if isinstance(tables, str) else tables:
        key = _row_key(cfg, name)
        if key is None:
            continue
        for row in paper_table(name):
            if name == "zca_stability":
                if row["backward"] == key and d is not None and int(row["d"]) == int(d):
                    return {**row, "source": paper_source(name)}
            elif frozenset(filter(None, (row.get("treatments") or "").split("+"))) == key:
                return {**row, "source": paper_source(name)}
    return None


def label_for(cfg, tables) -> str:
    """The paper's name of the configuration's row, or a name of ours that says it is not the paper's."""
    if cfg.kind == "bn":
        return "BatchNorm (no whitening)"
    row = row_for(cfg, tables, d=cfg.group_size)
    if row is not None:
        return row["method"]
    extra = "".join(f" + {t.upper()}" for t in sorted(cfg.treatments))
    names = {"divided_difference": "SVD-DivDiff (svdlib)"}
    return names.get(cfg.backward, f"SVD-{cfg.backward} (svdlib)") + extra

"""Our results beside the papers' published tables: what notebook 16 shows and writes.

Every reproduction notebook (10-15) leaves ``<results_root>/NN_name/report.json`` in the
format of :mod:`svdlib.experiments.report`. This module reads them all, files every reported
row and claim under the published table it refers to (the tables stored by
:mod:`svdlib.experiments.paper`), and builds, per table:

* our value beside the paper's, with the profile and the scale each run used (a ``quick``
  number is a CPU-scale check of a mechanism, never a paper-scale reproduction);
* the paper's claims with our verdict, in the vocabulary of :mod:`svdlib.experiments.stats`:
  ``holds``, ``does not hold``, ``not resolved`` (the interval straddles the claim's border) or
  ``too few runs`` (fewer than 3 replicates);
* the pairwise orderings of the rows: does our run order two treatments as the paper does?
  (Welch's interval from each row's mean, standard deviation and replicate count, Holm-adjusted
  over the pairs of one table.)
* the paper's rows that no run reported.

Outputs: ``SUMMARY.md`` and two CSV files (rows, claims) in the results root, one figure per
table (paper and ours on separate axes: the scales differ), and ``README.md`` in the results
root, which collects the per-configuration commands the notebook authors keep in
``notebooks/commands/NN.md``.

References
----------
Song, Sebe, Wang, "Improving Covariance Conditioning of the SVD Meta-layer by Orthogonality",
ECCV 2022 (Tables 1-6). Wang, Dang, Hu, Fua, Salzmann, "Robust Differentiable SVD", TPAMI 2021
(Tables III-IV, IX-X). Song, Sebe, Wang, "Why Approximate Matrix Square Root Outperforms
Accurate SVD in Global Covariance Pooling?", ICCV 2021 (no stored table: its rows are listed
under "Other results").
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import stats
from .atomic import write_atomic, write_csv
from .paper import PAPER_TABLES, paper_source, paper_table
from .report import PROFILES, load_reports

__all__ = [
    "TABLES",
    "TableSpec",
    "TableSummary",
    "Summary",
    "ROW_COLUMNS",
    "CLAIM_COLUMNS",
    "resolve_results_root",
    "match_table",
    "verdict",
    "ordering_agreement",
    "summarize",
    "summarize_results",
    "paper_markdown",
    "table_markdown",
    "summary_markdown",
    "plot_table",
    "verdict_changes",
    "changes_markdown",
    "write_summary",
    "write_results_readme",
]

_MPL_HINT = "plotting the summary needs matplotlib: pip install 'svdlib[notebooks]'"
PROFILE_CHOICES = (*PROFILES, "all")


@dataclass(frozen=True)
class TableSpec:
    """How a stored paper table is recognised in a report and drawn when nobody ran it.

    ``venue`` and ``numbers`` identify the table in a report's free-text reference
    (``"ECCV22 Table 4"``, ``"TPAMI Table IV"``); ``columns`` (and ``errors``, their
    standard deviations) are the published values drawn when no run reported on the table.
    """

    name: str
    venue: str
    numbers: tuple[int, ...]
    title: str
    columns: tuple[str, ...]
    axis: str
    errors: tuple[str | None, ...] = ()


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("decorrelated_bn", "eccv", (4, 1), "ECCV22 Table 4: decorrelated BN, ResNet-50",
                  ("cifar10_mean", "cifar100_mean"), "validation error (%)", ("cifar10_std", "cifar100_std")),
        TableSpec("decorrelated_bn_extra", "eccv", (2, 3), "ECCV22 Tables 2-3: further combinations",
                  ("cifar100_mean",), "CIFAR100 validation error (%)", ("cifar100_std",)),
        TableSpec("gcp", "eccv", (5,), "ECCV22 Table 5: GCP, ResNet-18 on ImageNet",
                  ("top1_acc",), "top-1 accuracy (%)"),
        TableSpec("timing", "eccv", (6,), "ECCV22 Table 6: time per pass, ResNet-50",
                  ("fp_ms", "bp_ms"), "time per pass (ms, RTX A6000)"),
        TableSpec("zca_stability", "tpami", (4, 3), "TPAMI Table IV: ZCA whitening, ResNet-18 on CIFAR-10",
                  ("success_rate",), "success rate"),
        TableSpec("style_transfer", "tpami", (9, 10), "TPAMI Table IX: WCT sharpness score",
                  ("cezanne", "monet", "ukiyoe", "vangogh"), "sharpness (mean |grad I|)"),
    )
}
assert set(TABLES) == set(PAPER_TABLES), "every stored paper table needs a TableSpec"

#: Columns of the rows CSV, in order.
ROW_COLUMNS = ("paper_table", "table", "row", "metric", "paper", "ours", "ours_std", "ours_n", "ours_metric",
               "profile", "scale", "notebook", "paper_in_table")
#: Columns of the claims CSV, in order.
CLAIM_COLUMNS = ("paper_table", "source", "claim", "paper_holds", "ours_holds", "verdict", "evidence",
                 "profile", "scale", "notebook")

_VENUES = {"eccv": ("eccv", "orthogonality"), "tpami": ("tpami", "robust differentiable", "robust svd"),
           "iccv": ("iccv", "why approximate")}
_ROMAN = {"i": 1, "v": 5, "x": 10, "l": 50}
_NUMBER = r"(\d+|[ivxl]+)\b"


# ----------------------------------------------------------------------------- matching
def resolve_results_root(results_root: str | os.PathLike, notebook_dir: str | os.PathLike) -> Path:
    """``results_root`` as given when absolute, else relative to ``notebook_dir``'s parent (the repo root)."""
    root = Path(results_root).expanduser()
    if not str(results_root):
        raise ValueError("results_root must name a folder, got ''")
    if not root.is_absolute():
        root = Path(notebook_dir).resolve().parent / root
    return root.resolve()


def _roman(text: str) -> int:
    if text.isdigit():
        return int(text)
    values = [_ROMAN[c] for c in text]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def _table_numbers(ref: str) -> list[int]:
    """Numbers after "Table"/"Tables"/"Tab.": ``"Tables 1-3"`` -> [1, 2, 3], ``"Tables III-IV"`` -> [3, 4]."""
    low = ref.lower()
    numbers: list[int] = []
    for m in re.finditer(r"\btab(?:le)?s?\.?\s*" + _NUMBER + r"(?:\s*(?:-|–|to|and|&|,)\s*" + _NUMBER + ")?", low):
        first = _roman(m.group(1))
        last = _roman(m.group(2)) if m.group(2) else first
        numbers.extend(range(first, last + 1) if last >= first else (first, last))
    return numbers


def _norm(text) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text or "").lower())


def match_table(table_ref: str, row_name: str = "") -> str | None:
    """Name of the stored paper table (a key of :data:`TABLES`) that ``table_ref`` cites, or None.

    ``table_ref`` is the free text of a report's ``table`` (or a claim's ``source``), e.g.
    ``"ECCV22 Table 4"``, ``"TPAMI Tables III-IV"``. ECCV Tables 1-3 repeat Table 4's CIFAR100
    column except for a few combinations stored in ``decorrelated_bn_extra``; ``row_name``
    decides between the two. Figures and tables we do not store give None.
    """
    low = str(table_ref or "").lower()
    venue = next((v for v, keys in _VENUES.items() if any(k in low for k in keys)), None)
    numbers = _table_numbers(low)
    if venue is None or not numbers:
        return None
    if venue == "eccv" and any(n in (1, 2, 3) for n in numbers) and 4 not in numbers:
        extra = {_norm(r["method"]) for r in paper_table("decorrelated_bn_extra")}
        extra |= {_norm(r["treatments"]) for r in paper_table("decorrelated_bn_extra")}
        if _norm(row_name) in extra or (not row_name and 1 not in numbers):
            return "decorrelated_bn_extra"
        return "decorrelated_bn"
    for spec in TABLES.values():
        if spec.venue == venue and spec.numbers[0] in numbers:
            return spec.name
    for spec in TABLES.values():
        if spec.venue == venue and any(n in numbers for n in spec.numbers):
            return spec.name
    return None


_OTHER_TITLES = {
    "ECCV22": "ECCV22 (orthogonality paper): figures and text, no stored table",
    "TPAMI21": "TPAMI21 (Robust Differentiable SVD): figures and text, no stored table",
    "ICCV21": "ICCV21 (approximate matrix square root in GCP): no stored table",
}


def _other_group(ref) -> tuple[str, str]:
    """Key and title of the "Other results" section for a reference no stored table matches.

    References to one paper's figures or text share a section (keyed ``"ECCV22"``,
    ``"TPAMI21"``, ``"ICCV21"``); anything else (e.g. ``"svdlib issue 10"``) is its own.
    """
    low = str(ref or "").lower()
    for venue, keys in _VENUES.items():
        if any(k in low for k in keys):
            key = {"eccv": "ECCV22", "tpami": "TPAMI21", "iccv": "ICCV21"}[venue]
            return key, _OTHER_TITLES[key]
    text = str(ref or "").strip() or "unspecified"
    return text, text


def verdict(claim: dict) -> str:
    """The claim's verdict (:data:`svdlib.experiments.stats.VERDICTS`); older reports without
    one get the verdict their ``ours_holds`` implies."""
    if claim.get("verdict") is not None:
        if claim["verdict"] not in stats.VERDICTS:
            raise ValueError(f"verdict must be one of {stats.VERDICTS}, got {claim['verdict']!r}")
        return claim["verdict"]
    return stats.verdict_of(claim.get("ours_holds"))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 + 1e-6 * max(abs(a), abs(b))


def _numeric_cells(row: dict) -> list[float]:
    return [v for k, v in row.items() if isinstance(v, float) and k != "d"]


def _paper_label(row: dict) -> str:
    d = row.get("d")
    return f"{row['method']} (d={int(d)})" if isinstance(d, float) else str(row["method"])


def _names_match(report_row: dict, paper_row: dict) -> bool:
    name = _norm(report_row.get("row"))
    if not name:
        return False
    candidates = {_norm(paper_row.get(k)) for k in ("method", "treatments", "backward")} - {""}
    if not any(name == c or name.startswith(c) or c.startswith(name) for c in candidates):
        return False
    d = paper_row.get("d")
    if isinstance(d, float):
        given = report_row.get("d")
        if given is not None:
            return float(given) == d
        return re.search(rf"\bd\s*=\s*{int(d)}\b", str(report_row.get("row", "")).lower()) is not None
    return True


def _covers(report_row: dict, paper_row: dict) -> bool:
    if not _names_match(report_row, paper_row):
        return False
    paper = report_row.get("paper")
    return paper is None or any(_close(paper, v) for v in _numeric_cells(paper_row))


# ----------------------------------------------------------------------------- orderings
_HIGHER = ("acc", "success", "sharp", "top1", "top-1", "top5")
_LOWER = ("err", "time", "ms", "fail", "loss", "cond", "diverg")


def _orientation(metric) -> int:
    low = str(metric or "").lower()
    if any(k in low for k in _HIGHER):
        return 1
    if any(k in low for k in _LOWER):
        return -1
    return 0


def _metric_key(metric) -> str:
    """Metric names that differ only in numbers ("mean of 2 seed(s)" / "of 3") measure the same thing."""
    return re.sub(r"\d+(?:\.\d+)?", "n", str(metric or ""))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _replicates(row: dict) -> int | None:
    n = row.get("ours_n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def ordering_agreement(rows: list[dict]) -> dict:
    """Do our rows order pairs of treatments as the paper's do?

    Pairs are formed within one (metric, our metric, notebook, profile) group (metric names
    compared with their numbers masked, so "mean of 2 seed(s)" pairs with "mean of 3"), from rows with
    both values and different paper values. Our side of a pair is Welch's comparison of the two
    rows (:func:`svdlib.experiments.stats.unpaired_from_summary`, from ``ours``, ``ours_std`` and
    ``ours_n``), claiming the paper's direction; the pairs of one call (one table) are one Holm
    family. A pair *agrees* when that claim holds, *disagrees* when it does not hold, is *not
    resolved* otherwise, and counts as *too few runs* when a row has fewer than
    :data:`~svdlib.experiments.stats.MIN_REPLICATES` replicates (or does not say how many). When the
    paper's metric is better-when-higher (accuracy) and ours better-when-lower (error), or vice
    versa, the direction is flipped.

    Returns ``{"pairs", "agree", "disagree", "unresolved", "too_few", "disagreeing": [(row_a, row_b), ...]}``.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("paper") is None or r.get("ours") is None:
            continue
        key = (_metric_key(r.get("metric")), _metric_key(r.get("ours_metric")), r.get("notebook"), r.get("profile"))
        groups.setdefault(key, []).append(r)
    pairs, comparisons = [], []
    for (metric, ours_metric, _, _), members in groups.items():
        po, oo = _orientation(metric), _orientation(ours_metric)
        flip = -1 if po and oo and po != oo else 1
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                paper_sign = _sign(a["paper"] - b["paper"])
                if paper_sign == 0:
                    continue
                region = stats.higher() if flip * paper_sign > 0 else stats.lower()
                na, nb = _replicates(a), _replicates(b)
                sa, sb = a.get("ours_std"), b.get("ours_std")
                if na is None or nb is None:
                    comparison = None
                else:
                    comparison = stats.unpaired_from_summary(
                        a["ours"], math.nan if sa is None else sa, na,
                        b["ours"], math.nan if sb is None else sb, nb, region)
                pairs.append((a["row"], b["row"]))
                comparisons.append(comparison)
    out = {"pairs": len(pairs), "agree": 0, "disagree": 0, "unresolved": 0, "too_few": 0, "disagreeing": []}
    for pair, c in zip(pairs, stats.holm(comparisons)):
        word = stats.TOO_FEW if c is None else c.verdict
        key = {stats.HOLDS: "agree", stats.FAILS: "disagree", stats.UNRESOLVED: "unresolved",
               stats.TOO_FEW: "too_few"}[word]
        out[key] += 1
        if word == stats.FAILS:
            out["disagreeing"].append(pair)
    return out


# ----------------------------------------------------------------------------- summary
@dataclass
class TableSummary:
    """One published table (or, for ``name=None``, one table reference we store no numbers for)."""

    name: str | None
    title: str
    source: str
    rows: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    ordering: dict = field(default_factory=dict)

    @property
    def profiles(self) -> list[str]:
        return sorted({r["profile"] for r in self.rows + self.claims})

    @property
    def has_results(self) -> bool:
        return bool(self.rows or self.claims)


@dataclass
class Summary:
    """Everything notebook 16 shows: the reports read, the stored tables, and the other results."""

    reports: list[dict]
    tables: dict[str, TableSummary]
    other: dict[str, TableSummary]
    skipped: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return [r for t in self.all_tables() for r in t.rows]

    @property
    def claims(self) -> list[dict]:
        return [c for t in self.all_tables() for c in t.claims]

    def all_tables(self) -> list[TableSummary]:
        return list(self.tables.values()) + list(self.other.values())

    def verdict_counts(self) -> dict[str, int]:
        """Claims per verdict word, in the order of :data:`svdlib.experiments.stats.VERDICTS`."""
        counts = dict.fromkeys(stats.VERDICTS, 0)
        for c in self.claims:
            counts[c["verdict"]] += 1
        return counts


def _run_fields(report: dict) -> dict:
    return {"profile": report.get("profile"), "scale": report.get("scale", ""), "notebook": report.get("notebook")}


def summarize(reports: list[dict], profile: str = "all") -> Summary:
    """File every row and claim of ``reports`` under the paper table it cites.

    Parameters
    ----------
    reports : list of dict
        As returned by :func:`svdlib.experiments.report.load_reports`.
    profile : {"all", "quick", "paper"}
        Keep only the reports run at this profile (``"all"``: every report, each labelled).
        Reports left out are listed in ``Summary.skipped``.
    """
    if profile not in PROFILE_CHOICES:
        raise ValueError(f"profile must be one of {PROFILE_CHOICES}, got {profile!r}")
    kept = [r for r in reports if profile == "all" or r.get("profile") == profile]
    skipped = [r for r in reports if r not in kept]
    tables = {name: TableSummary(name, spec.title, paper_source(name)) for name, spec in TABLES.items()}
    other: dict[str, TableSummary] = {}

    def bucket(ref: str, row_name: str = "") -> TableSummary:
        name = match_table(ref, row_name)
        if name is not None:
            return tables[name]
        key, title = _other_group(ref)
        return other.setdefault(key, TableSummary(None, title, "no stored paper table"))

    for report in kept:
        run = _run_fields(report)
        for row in report.get("rows", []):
            target = bucket(row.get("table"), row.get("row", ""))
            entry = {k: row.get(k) for k in ("table", "row", "metric", "paper", "ours", "ours_std", "ours_n")}
            entry["ours_metric"] = row.get("ours_metric") or row.get("metric")
            entry.update(run, paper_table=target.name)
            if target.name is not None and entry["paper"] is not None:
                stored = paper_table(target.name)
                entry["paper_in_table"] = any(_close(entry["paper"], v) for p in stored for v in _numeric_cells(p))
            else:
                entry["paper_in_table"] = None
            target.rows.append({k: entry.get(k) for k in ROW_COLUMNS})
        for claim in report.get("claims", []):
            target = bucket(claim.get("source"))
            entry = {k: claim.get(k) for k in ("source", "claim", "paper_holds", "ours_holds", "evidence")}
            entry.update(run, paper_table=target.name, verdict=verdict(claim))
            target.claims.append({k: entry.get(k) for k in CLAIM_COLUMNS})
    for ts in tables.values():
        ts.uncovered = [_paper_label(p) for p in paper_table(ts.name)
                        if not any(_covers(r, p) for r in ts.rows)]
    for ts in [*tables.values(), *other.values()]:
        ts.ordering = ordering_agreement(ts.rows)
    return Summary(kept, tables, dict(sorted(other.items())), skipped)


def summarize_results(results_root: str | os.PathLike, profile: str = "all") -> Summary:
    """:func:`summarize` of every ``report.json`` under ``results_root`` (none: empty tables)."""
    root = Path(results_root)
    return summarize(load_reports(root) if root.is_dir() else [], profile)


# ----------------------------------------------------------------------------- markdown
def _fmt(value, std=None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if std is None or not std > 0 or not math.isfinite(std):
            return f"{value:.4g}" if std is None else f"{value:.4g} ± {std:.2g}"
        digits = min(6, max(0, 1 - math.floor(math.log10(std))))  # two significant digits of the std
        return f"{value:.{digits}f} ± {std:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def paper_markdown(name: str, cite: bool = True) -> str:
    """The stored published table ``name`` as a markdown table (citation first when ``cite``)."""
    rows = paper_table(name)
    header = [k for k in rows[0] if any(r[k] is not None for r in rows)]
    table = _md_table(header, [[r[k] for k in header] for r in rows])
    return f"*{paper_source(name)}*\n\n{table}" if cite else table


def table_markdown(ts: TableSummary, heading: str = "###") -> str:
    """One table's section: our rows beside the paper's, the claims and our verdicts, the orderings."""
    out = [f"{heading} {ts.title}", ""]
    if ts.name is not None:
        out += [f"Paper: {ts.source}", ""]
    if not ts.has_results:
        out += ["**No run reported on this table yet.** The published values:", "",
                paper_markdown(ts.name, cite=False) if ts.name else "", ""]
        return "\n".join(out)
    if {"quick", "long"} & set(ts.profiles):
        out += ["*Rows marked `quick` or `long` ran at CPU scale (digits/synthetic data, tiny models; `long` "
                "with the papers' replicate counts): they test the paper's mechanism, they are not a "
                "paper-scale reproduction.*", ""]
    if ts.rows:
        cited = [[r["table"]] if ts.name is None else [] for r in ts.rows]  # "other": say what each row cites
        body = [c + [r["row"], r["metric"],
                     r["paper"] if r["paper_in_table"] is not False else f"{_fmt(r['paper'])} †",
                     _fmt(r["ours"], r["ours_std"]), r.get("ours_n"), r["ours_metric"], f"`{r['profile']}`",
                     r["notebook"]]
                for c, r in zip(cited, ts.rows)]
        out += [_md_table((["cited"] if ts.name is None else []) + [
            "row", "paper metric", "paper", "ours (± spread: see our metric)", "replicates", "our metric",
            "profile", "notebook"], body), ""]
        if any(r["paper_in_table"] is False for r in ts.rows):
            out += ["† this paper value is not in the stored table (svdlib/experiments/paper_numbers): "
                    "check the report.", ""]
        o = ts.ordering
        if o.get("pairs"):
            out += [f"Pairwise orderings (ours vs the paper's, Welch intervals, Holm over the {o['pairs']} pairs): "
                    f"{o['agree']} agree, {o['disagree']} disagree, {o['unresolved']} not resolved, "
                    f"{o['too_few']} too few runs.", ""]
    if ts.claims:
        body = [[c["claim"], c["source"], _paper_word(c["paper_holds"]), f"**{c['verdict']}**", c["evidence"],
                 f"`{c['profile']}`", c["notebook"]] for c in ts.claims]
        out += [_md_table(["claim", "source", "paper", "ours", "evidence", "profile", "notebook"], body), ""]
    if ts.uncovered:
        out += [f"Paper rows no run reported: {', '.join(ts.uncovered)}.", ""]
    return "\n".join(out)


def _paper_word(paper_holds) -> str:
    return {True: "holds", False: "does not hold"}.get(paper_holds, "-")


def summary_markdown(summary: Summary, figures: dict[str, str] | None = None) -> str:
    """The whole ``SUMMARY.md``: runs found, verdict counts, one section per table.

    ``figures`` maps a table name (or an "other" table reference) to a figure path, written
    as a link under its section (relative to where SUMMARY.md lies).
    """
    figures = figures or {}
    out = ["# Our results beside the papers'", "",
           "Generated by `notebooks/16_summary.ipynb` (`svdlib.experiments.summary`) from every "
           "`report.json` under this folder; do not edit by hand. Each value carries the profile and the "
           "scale of the run that produced it: `quick` and `long` runs are CPU-scale checks, never "
           "paper-scale reproductions.", "",
           "Verdicts (`svdlib.experiments.stats`): a claim **holds** when the 95% confidence interval of "
           "its effect lies wholly in the region the claim names (a direction, or a stated equivalence "
           "margin), **does not hold** when it lies wholly outside, is **not resolved** when it straddles "
           "a border, and is **too few runs** below 3 replicates per group. The claims of one notebook run "
           "are one Holm family (5% family-wise error); so are the pairwise orderings of one table.", ""]
    if not summary.reports:
        out += ["**No report.json was found: no reproduction notebook has been run into this folder yet** "
                "(`make reproduce`). The papers' tables follow alone.", ""]
    else:
        out += ["## Runs", "", _md_table(
            ["notebook", "profile", "scale", "rows", "claims"],
            [[r["notebook"], f"`{r.get('profile')}`", r.get("scale", ""), len(r.get("rows", [])),
              len(r.get("claims", []))] for r in summary.reports]), ""]
        counts = summary.verdict_counts()
        out += [f"Claims checked: {sum(counts.values())}: "
                + "; ".join(f"{word}: {counts[word]}" for word in stats.VERDICTS) + ".", ""]
    if summary.skipped:
        left = ", ".join(f"{r['notebook']} ({r.get('profile')})" for r in summary.skipped)
        out += [f"Left out (other profile): {left}.", ""]
    out += ["## Published tables", ""]
    for name, ts in summary.tables.items():
        out.append(table_markdown(ts))
        if name in figures:
            out += [f"![{ts.title}]({figures[name]})", ""]
    if summary.other:
        out += ["## Other results (no stored paper table)", ""]
        for ref, ts in summary.other.items():
            out.append(table_markdown(ts))
            if ref in figures:
                out += [f"![{ts.title}]({figures[ref]})", ""]
    return "\n".join(out).rstrip() + "\n"


def verdict_changes(summary: Summary, other: Summary) -> list[dict]:
    """Claim by claim, this summary's verdict beside ``other``'s (e.g. a ``long`` run beside ``quick``).

    Claims are matched on (notebook, claim text). Returns rows ``{"notebook", "claim", "source",
    "paper_holds", "this", "other", "changed", "this_evidence", "other_evidence"}`` in this
    summary's order, then the claims only ``other`` has (``this`` None).
    """
    theirs = {(c["notebook"], c["claim"]): c for c in other.claims}
    rows, seen = [], set()
    for c in summary.claims:
        key = (c["notebook"], c["claim"])
        o = theirs.get(key)
        seen.add(key)
        rows.append({"notebook": c["notebook"], "claim": c["claim"], "source": c["source"],
                     "paper_holds": c["paper_holds"], "this": c["verdict"], "other": o["verdict"] if o else None,
                     "changed": o is not None and o["verdict"] != c["verdict"],
                     "this_evidence": c["evidence"], "other_evidence": o["evidence"] if o else None})
    for key, o in theirs.items():
        if key not in seen:
            rows.append({"notebook": o["notebook"], "claim": o["claim"], "source": o["source"],
                         "paper_holds": o["paper_holds"], "this": None, "other": o["verdict"], "changed": False,
                         "this_evidence": None, "other_evidence": o["evidence"]})
    return rows


def changes_markdown(rows: list[dict], this: str, other: str) -> str:
    """The rows of :func:`verdict_changes` as a markdown section (changed verdicts in bold)."""
    changed = sum(r["changed"] for r in rows)
    both = sum(r["this"] is not None and r["other"] is not None for r in rows)
    out = [f"## Verdicts: {this} beside {other}", "",
           f"{both} claims in both runs; {changed} changed verdict. Claims in only one run show a dash.", ""]
    body = [[r["notebook"], r["claim"], _paper_word(r["paper_holds"]), r["other"] or "—",
             f"**{r['this']}**" if r["changed"] else (r["this"] or "—")] for r in rows]
    out += [_md_table(["notebook", "claim", "paper", other, this], body), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_MPL_HINT) from exc
    return plt


def _log_if_wide(ax, values) -> None:
    pos = [v for v in values if v is not None and v > 0]
    if pos and len(pos) == len([v for v in values if v is not None]) and max(pos) / min(pos) > 100:
        ax.set_xscale("log")


def _dots(ax, values, ys, xerr=None, **style) -> None:
    """Values as dots (with std error bars): differences of a few percent stay visible, unlike bars from 0."""
    pts = [(v, y, 0.0 if xerr is None else (xerr[i] or 0.0))
           for i, (v, y) in enumerate(zip(values, ys)) if v is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=[p[2] for p in pts] if xerr else None,
                    fmt=style.pop("fmt", "o"), capsize=3, **style)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15, y=0.08)


def _plot_paper_only(name: str):
    plt = _pyplot()
    spec, rows = TABLES[name], paper_table(name)
    if name == "zca_stability":
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for k, method in enumerate(methods):
            pts = [(r["d"], r["success_rate"]) for r in rows if r["method"] == method]
            # methods that all succeed overlap at 1.0: nested markers of decreasing size keep each visible
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="osD^v"[k % 5], markersize=11 - 2 * k,
                    linestyle=("-", "--", ":", "-.")[k % 4], label=method, alpha=0.85)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("group dimension d")
        ax.set_ylabel(f"paper: {spec.axis}")
        ax.legend(fontsize=8)
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, len(spec.columns), figsize=(4 + 3 * len(spec.columns), 0.32 * len(rows) + 1.8),
                                 sharey=True, squeeze=False, layout="constrained")
        axes = list(axes[0])
        ys = list(range(len(rows)))
        errors = spec.errors or (None,) * len(spec.columns)
        for ax, col, err in zip(axes, spec.columns, errors):
            _dots(ax, [r[col] for r in rows], ys, [r[err] for r in rows] if err else None, color="0.35", fmt="s")
            ax.set_xlabel(f"paper: {col}\n{spec.axis}", fontsize=9)
        axes[0].set_yticks(ys, [_paper_label(r) for r in rows], fontsize=8)
        axes[0].invert_yaxis()
    fig.suptitle(f"{spec.title}\n(paper values only: no run reported on this table)", fontsize=10)
    return fig


def plot_table(ts: TableSummary):
    """One figure per table: the paper's values (left) and ours (right) on separate axes.

    The two columns never share an x axis: the paper ran CIFAR/ImageNet-scale models, a
    ``quick`` run digits-scale ones, so only the orderings, not the magnitudes, compare. Rows
    are aligned (one position per reported row, dots with std error bars); one row of panels per (paper metric,
    our metric). A table nobody ran on shows the published values alone. Returns the Figure,
    or None for a reference without stored table and without rows.
    """
    if not ts.rows:
        return _plot_paper_only(ts.name) if ts.name is not None else None
    plt = _pyplot()
    groups: dict[tuple, list[dict]] = {}
    for r in ts.rows:
        groups.setdefault((_metric_key(r["metric"]), _metric_key(r["ours_metric"])), []).append(r)
    height = sum(0.3 * len(g) + 1.2 for g in groups.values()) + 0.8
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, height), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [len(g) + 2 for g in groups.values()]})
    for key, (ax_p, ax_o) in zip(groups, axes):
        members = groups[key]
        metric, ours_metric = ({r[k] for r in members} for k in ("metric", "ours_metric"))
        metric = metric.pop() if len(metric) == 1 else key[0]  # one name, or the shared one with "n" for numbers
        ours_metric = ours_metric.pop() if len(ours_metric) == 1 else key[1]
        ys = list(range(len(members)))
        labels = [f"{r['row']} [{r['profile']}]" for r in members]
        _dots(ax_p, [r["paper"] for r in members], ys, color="0.35", fmt="s")
        _dots(ax_o, [r["ours"] for r in members], ys, [r["ours_std"] for r in members], color="C0")
        for ax, vals in ((ax_p, [r["paper"] for r in members]), (ax_o, [r["ours"] for r in members])):
            ax.set_yticks(ys, labels, fontsize=8)
            ax.set_ylim(len(members) - 0.5, -0.5)
            _log_if_wide(ax, vals)
        profiles = sorted({r["profile"] for r in members})
        scales = "; ".join(sorted({r["scale"] for r in members}))
        ax_p.set_xlabel(f"paper: {metric}")
        ax_o.set_xlabel(f"ours: {ours_metric} (profile {', '.join(profiles)})")
        ax_p.set_title(f"Paper ({ts.title if ts.name else ts.source})", fontsize=9)
        note = " (not paper scale)" if "quick" in profiles else ""
        ax_o.set_title(f"Ours{note}: {scales}", fontsize=8, wrap=True)
    fig.suptitle(ts.title, fontsize=11)
    return fig


# ----------------------------------------------------------------------------- writing
def write_summary(summary: Summary, results_root: str | os.PathLike,
                  figures: dict[str, str | os.PathLike] | None = None,
                  compare: tuple[str, str, Summary] | None = None) -> dict[str, Path]:
    """Write ``SUMMARY.md``, ``summary_rows.csv`` and ``summary_claims.csv`` into ``results_root``.

    ``figures`` (table name -> PNG path) are linked from SUMMARY.md relative to the root.
    ``compare`` = (this run's label, the other's label, the other :class:`Summary`) appends the
    claim-by-claim verdicts of both (:func:`verdict_changes`) to SUMMARY.md.
    Returns the paths written, keyed ``"markdown"``, ``"rows"``, ``"claims"``.
    """
    root = Path(results_root)
    root.mkdir(parents=True, exist_ok=True)
    links = {k: Path(os.path.relpath(Path(v).resolve(), root.resolve())).as_posix() for k, v in (figures or {}).items()}
    md = root / "SUMMARY.md"
    text = summary_markdown(summary, links)
    if compare is not None:
        this, other, other_summary = compare
        text += "\n" + changes_markdown(verdict_changes(summary, other_summary), this, other)
    write_atomic(md, text)
    return {"markdown": md,
            "rows": write_csv(root / "summary_rows.csv", ({k: r.get(k) for k in ROW_COLUMNS} for r in summary.rows),
                              ROW_COLUMNS),
            "claims": write_csv(root / "summary_claims.csv", ({k: c.get(k) for k in CLAIM_COLUMNS}
                                                               for c in summary.claims), CLAIM_COLUMNS)}


def write_results_readme(results_root: str | os.PathLike, commands_dir: str | os.PathLike,
                         reports: list[dict] | None = None) -> Path:
    """Write ``results_root/README.md``: how every result here is (re)produced.

    Collects the per-configuration command tables the notebook authors keep in
    ``commands_dir/NN.md`` (verbatim, one section each, in number order), after a table of
    the reproduction notebooks (those in ``commands_dir``'s parent named ``1N_*.ipynb`` but the
    summary itself, or
    with a commands file, or with a report here) giving, for each, the report found here
    (profile, scale) and the exact ``make reproduce`` command of each profile.
    """
    root = Path(results_root)
    commands = Path(commands_dir)
    files = {p.stem[:2]: p for p in sorted(commands.glob("[0-9][0-9]*.md"))} if commands.is_dir() else {}
    notebooks = ({p.stem[:2]: p.stem for p in sorted(commands.parent.glob("1[0-9]_*.ipynb"))
                  if not p.stem.endswith("_summary")}  # this summary is no reproduction of its own
                 if commands.parent.is_dir() else {})
    if reports is None:
        reports = load_reports(root) if root.is_dir() else []
    by_number: dict[str, list[dict]] = {}
    for r in reports:
        by_number.setdefault(str(r.get("notebook", ""))[:2], []).append(r)
    numbers = sorted(set(notebooks) | set(files) | set(by_number))
    out = ["# Results", "",
           "Generated by `notebooks/16_summary.ipynb` (`svdlib.experiments.summary.write_results_readme`); "
           "do not edit by hand. `SUMMARY.md` puts our values beside the papers'.", "",
           "Layout: `NN_name.ipynb` is the executed notebook, `NN_name.run.json` its parameters and "
           "timings, `NN_name/` its figures, tables, runs and `report.json`.", "",
           "## Commands", "",
           "```bash",
           "make reproduce                                   # every notebook, quick profile (CPU)",
           "make reproduce PROFILE=long RESULTS=results-long # the papers' replicate counts, CPU scale",
           "make reproduce PROFILE=paper DATA=/path/to/data  # the papers' protocol (GPU, datasets)",
           "make reproduce ONLY=10 PROFILE=paper DATA=/path/to/data   # one notebook",
           "make reproduce ONLY=16 FORCE=1                   # rebuild SUMMARY.md and this README from what is here",
           "```", "",
           "Runs are resumable: a finished notebook (same parameters, same cells) is skipped, and the "
           "training runs inside a notebook skip finished configurations; `FORCE=1` re-runs.", "",
           "## Notebooks", ""]
    rows = []
    for n in numbers:
        name = notebooks.get(n) or (by_number[n][0]["notebook"] if n in by_number else n)
        found = by_number.get(n, [])
        rows.append([f"`{name}`",
                     ", ".join(f"`{r.get('profile')}`: {r.get('scale', '')}" for r in found) or "not run here",
                     f"`make reproduce ONLY={n}`",
                     f"`make reproduce ONLY={n} PROFILE=long RESULTS=results-long`",
                     f"`make reproduce ONLY={n} PROFILE=paper DATA=/path/to/data`",
                     f"[commands/{files[n].name}](#{n}-per-configuration-commands)" if n in files
                     else "not written yet"])
    header = ["notebook", "report here (profile: scale)", "quick", "long", "paper", "per-configuration commands"]
    out += [_md_table(header, rows)
            if rows else "No reproduction notebook found.", ""]
    for n in numbers:
        if n in files:
            out += [f"## {n} per-configuration commands", "",
                    f"From `notebooks/commands/{files[n].name}`:", "",
                    files[n].read_text(encoding="utf-8").strip(), ""]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "README.md"
    return write_atomic(path, "\n".join(out).rstrip() + "\n")

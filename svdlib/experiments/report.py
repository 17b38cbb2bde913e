"""One report format for every reproduction notebook (10-16), read back by notebook 16.

Each notebook writes ``<results_dir>/report.json``::

    {"notebook": "10_decorrelated_bn", "profile": "quick",
     "scale": "digits 16x16, ResNet width 16, 4 epochs, 3 seeds, CPU",
     "rows":   [{"table": "ECCV22 Table 4", "row": "SVD + NOG", "metric": "CIFAR100 error (%)",
                 "paper": 19.43, "ours": 11.2, "ours_std": 0.4, "ours_n": 3,
                 "ours_metric": "digits error (%)"}],
     "claims": [{"claim": "NOG lowers the error of plain SVD", "source": "ECCV22 Table 4",
                 "paper_holds": true, "verdict": "not resolved", "ours_holds": null,
                 "evidence": "effect -0.3 [95% CI -1.2, 0.6] ...", "stats": {...}}]}

``verdict`` is one of :data:`svdlib.experiments.stats.VERDICTS` ("holds", "does not hold",
"not resolved", "too few runs") and ``ours_holds`` its True / False / None reading; ``stats``
is the :meth:`~svdlib.experiments.stats.Comparison.as_dict` record behind it. ``ours_n`` is the
number of replicates behind ``ours`` and ``ours_std`` (the summary's ordering check needs it).
Notebook 16 never compares a quick-profile number with a paper number as if they were the same
experiment: it prints the profile and scale beside every value.

:class:`ClaimTable` is how a notebook builds its claims: one :class:`~svdlib.experiments.stats.Comparison`
per claim, Holm-adjusted as one family (the report), printed as the "What we showed" table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import stats
from .atomic import write_json

__all__ = ["write_report", "load_reports", "REPORT_FILE", "PROFILES", "ClaimTable"]

REPORT_FILE = "report.json"
_ROW_KEYS = {"table", "row", "metric", "paper", "ours"}
_CLAIM_KEYS = {"claim", "source", "paper_holds", "ours_holds", "evidence"}
#: Profiles a report may carry: ``quick`` (CPU minutes), ``long`` (the papers' replicate counts
#: at CPU scale), ``paper`` (the papers' protocol, GPU and datasets).
PROFILES = ("quick", "long", "paper")


def write_report(results_dir, notebook: str, profile: str, scale: str,
                 rows: list[dict], claims: list[dict]) -> Path | None:
    """Validate and atomically write ``report.json``; returns its path (None if results_dir is "").

    A claim without ``verdict`` gets the one its ``ours_holds`` implies; a claim with both must
    have them agree (``holds`` with True, ``does not hold`` with False, the others with None).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    for i, row in enumerate(rows):
        missing = _ROW_KEYS - set(row)
        if missing:
            raise ValueError(f"report row {i} lacks keys {sorted(missing)}: {row}")
    checked = []
    for i, claim in enumerate(claims):
        missing = _CLAIM_KEYS - set(claim)
        if missing:
            raise ValueError(f"report claim {i} lacks keys {sorted(missing)}: {claim}")
        if claim["ours_holds"] not in (True, False, None):
            raise ValueError(f"claim {i}: ours_holds must be True, False or None, got {claim['ours_holds']!r}")
        verdict = claim.get("verdict", stats.verdict_of(claim["ours_holds"]))
        if verdict not in stats.VERDICTS:
            raise ValueError(f"claim {i}: verdict must be one of {stats.VERDICTS}, got {verdict!r}")
        if stats.ours_holds(verdict) is not claim["ours_holds"]:
            raise ValueError(f"claim {i}: verdict {verdict!r} contradicts ours_holds={claim['ours_holds']!r}")
        checked.append({**claim, "verdict": verdict})
    if not results_dir:
        return None
    payload = {"notebook": notebook, "profile": profile, "scale": scale, "rows": rows, "claims": checked}
    return write_json(Path(results_dir) / REPORT_FILE, payload, finite=True)


def load_reports(results_root) -> list[dict]:
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


@dataclass
class ClaimTable:
    """The claims of one notebook run: one comparison each, one Holm family, one printed table.

    >>> t = ClaimTable("quick")
    >>> t.add("a is lower than b", "Table 1", True, stats.unpaired([1, 1.1, 0.9], [2, 2.1, 1.9], stats.lower()))
    >>> [c["verdict"] for c in t.claims()]
    ['holds']
    """

    profile: str
    entries: list[dict] = field(default_factory=list)

    def add(self, claim: str, source: str, paper_holds: bool | None, comparison: stats.Comparison | None,
            paper_value: str = "", evidence: str = "") -> None:
        """One claim. ``comparison`` None: nothing to compare (a treatment not run): not resolved.

        ``evidence`` is put before the comparison's own description (means, counts).
        """
        self.entries.append({"claim": claim, "source": source, "paper_holds": paper_holds,
                             "comparison": comparison, "paper_value": paper_value, "evidence": evidence})

    def _adjusted(self) -> list[stats.Comparison | None]:
        return stats.holm([e["comparison"] for e in self.entries])

    def claims(self) -> list[dict]:
        """The claims in the report format, Holm-adjusted over this table."""
        out = []
        for e, c in zip(self.entries, self._adjusted()):
            verdict = stats.UNRESOLVED if c is None else c.verdict
            described = "not measured (a side was not run)" if c is None else c.describe()
            evidence = f"{e['evidence']}; {described}" if e["evidence"] else described
            out.append({"claim": e["claim"], "source": e["source"], "paper_holds": e["paper_holds"],
                        "verdict": verdict, "ours_holds": stats.ours_holds(verdict),
                        "evidence": f"{evidence} [{self.profile}]", "paper_value": e["paper_value"],
                        "stats": None if c is None else c.as_dict()})
        return out

    def reversals(self) -> list[dict]:
        """Claims our run decides against the paper: the paper's claim holds and ours does not, or
        the other way round. Each must be named and discussed where it appears."""
        return [c for c in self.claims() if (c["paper_holds"] is True and c["verdict"] == stats.FAILS)
                or (c["paper_holds"] is False and c["verdict"] == stats.HOLDS)]

    def markdown(self) -> str:
        """The "What we showed" table as markdown: claim | paper | verdict | evidence."""
        lines = [f"| claim | source | paper | ours ({self.profile}) | evidence |", "|---|---|---|---|---|"]
        for c in self.claims():
            paper = {True: "holds", False: "does not hold", None: "not in the paper"}[c["paper_holds"]]
            paper += f": {c['paper_value']}" if c["paper_value"] else ""
            cells = [c["claim"], c["source"], paper, f"**{c['verdict']}**", c["evidence"]]
            lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
        return "\n".join(lines)

    def show(self) -> None:
        """Display :meth:`markdown` (rendered in a notebook, printed elsewhere)."""
        try:
            from IPython import get_ipython
            from IPython.display import Markdown, display
        except ImportError:  # pragma: no cover - IPython comes with the notebooks extra
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            print(self.markdown())
        else:
            display(Markdown(self.markdown()))
        turned = self.reversals()
        print(f"Reversals against the paper in this run: {len(turned)}"
              + "".join(f"\n  - {c['claim']} (paper: {c['paper_value'] or c['paper_holds']}; ours: {c['verdict']})"
                        for c in turned))

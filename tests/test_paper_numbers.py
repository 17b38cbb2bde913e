"""The stored published numbers load, cite their table, and are internally consistent."""
import pytest

from svdlib.experiments.paper import PAPER_TABLES, paper_source, paper_table


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_every_table_loads_with_a_citation(name):
    rows = paper_table(name)
    assert rows and "Table" in paper_source(name)


def test_table4_best_row_is_the_hybrid_treatment_as_the_paper_says():
    rows = paper_table("decorrelated_bn")
    best = min(rows, key=lambda r: r["cifar100_mean"])
    assert best["treatments"] == "nog+ow+olr"
    svd = next(r for r in rows if r["method"] == "SVD")
    assert svd["cifar10_mean"] - best["cifar10_mean"] == pytest.approx(0.42)  # "by 0.4% on CIFAR10"


def test_taylor_never_fails_in_tpami_table4():
    rows = [r for r in paper_table("zca_stability") if r["backward"] == "taylor"]
    assert len(rows) == 5 and all(r["success_rate"] == 1.0 for r in rows)


def test_unknown_table_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown paper table"):
        paper_table("nope")

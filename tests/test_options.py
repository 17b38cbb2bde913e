"""One record per remedy, options validated once at the public call (svdlib._options,
svdlib.remedies.Remedy), and a remedy added with one function and one registry line."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import svdlib
from svdlib import _options, fused, remedies
from svdlib.remedies import Remedy, register_backward
from _spine_helpers import matrix_with_spectrum


# ----------------------------------------------------------------------------- the records
def test_every_default_lives_in_one_builder_signature():
    """The record's defaults are read from its builders; nothing else restates them."""
    assert svdlib.BACKWARDS["taylor"].defaults == {"degree": 9, "floor": 1e-10}
    assert svdlib.BACKWARDS["clip"].defaults == {"k_max": 100.0}
    assert svdlib.BACKWARDS["truncate"].defaults == {"k_max": 1e10, "cutoff": 1e-5, "top_n": None}
    assert svdlib.BACKWARDS["power_iteration"].defaults["iterations"] == 9
    assert svdlib.BACKWARDS["divided_difference"].defaults == {}
    assert not svdlib.BACKWARDS["exact"].foldable and svdlib.BACKWARDS["taylor"].foldable


def test_remedy_record_refuses_conflicting_defaults_and_checks_for_unknown_options():
    def k_a(lam, floor: float = 1.0):
        return remedies.k_exact(lam)

    def kept_a(lam, floor: float = 2.0):
        return torch.ones_like(lam)

    with pytest.raises(ValueError, match="option 'floor' has two defaults"):
        Remedy("a", k_matrix=k_a, kept=kept_a)
    with pytest.raises(ValueError, match=r"checks for unknown options \['degree'\]"):
        Remedy("a", k_matrix=k_a, checks={"degree": lambda v, n: v})
    with pytest.raises(ValueError, match="needs k_matrix, gradient or f_matrix"):
        Remedy("a")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("backward, options, message", [
    ("taylor", {"degre": 3}, r"unknown option\(s\) \['degre'\] for backward='taylor'; valid options: \['degree', 'floor'\]"),
    ("taylor", {"degree": -1}, r"backward='taylor': option degree must be an integer >= 0, got -1"),
    ("taylor", {"degree": 2.5}, r"option degree must be an integer >= 0, got 2.5"),
    ("taylor", {"floor": 0.0}, r"option floor must be a finite real number > 0, got 0.0"),
    ("clip", {"k_max": -1.0}, r"backward='clip': option k_max must be a finite real number > 0"),
    ("clip", {"k_max": math.inf}, r"option k_max must be a finite real number > 0, got inf"),
    ("pade", {"order": (1, -1)}, r"order\[1\] must be an integer >= 0, got -1"),
    ("pade", {"order": 5}, r"order must be two integers >= 0"),
    ("power_iteration", {"iterations": -2}, r"iterations must be an integer >= 1, got -2"),
    ("divided_difference", {"degree": 9}, r"unknown option\(s\) \['degree'\] for backward='divided_difference'; valid options: none"),
    ("nope", {}, r"unknown backward 'nope'; expected one of \["),
])
def test_bad_options_fail_at_the_public_call_naming_the_remedy(backward, options, message):
    A = matrix_with_spectrum([1.0, 2.0, 3.0], seed=0)
    with pytest.raises(ValueError, match=message):
        svdlib.sqrtm(A, backward=backward, **options)


def test_matrix_function_keywords_are_checked_too():
    A = matrix_with_spectrum([1.0, 2.0, 3.0], seed=0)
    for kwargs, message in [({"eps": -1.0}, "eps must be a finite real number >= 0"),
                            ({"iterations": 0}, "iterations must be an integer >= 1"),
                            ({"compile": "yes"}, "compile must be True, False or 'auto'"),
                            ({"min_eigenvalue": math.nan}, "min_eigenvalue must be")]:
        with pytest.raises(ValueError, match=message):
            svdlib.sqrtm(A, **kwargs)
        if "iterations" not in kwargs:
            with pytest.raises(ValueError, match=message):
                svdlib.eigh(A, **kwargs)


def test_eigh_refuses_a_remedy_without_an_eigh_form():
    with pytest.raises(ValueError, match="applies to matrix functions"):
        svdlib.eigh(torch.eye(3), backward="divided_difference")


def test_renamed_options_warn_and_mean_the_same():
    A = matrix_with_spectrum([0.5, 1.0, 1.0 + 1e-9, 2.0], seed=1).requires_grad_()
    G = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grad(**opts):
        a = A.detach().clone().requires_grad_()
        (svdlib.sqrtm(a, **opts) * G).sum().backward()
        return a.grad

    for backward, old, new in [("clip", {"threshold": 7.0}, {"k_max": 7.0}),
                               ("truncate", {"threshold": 0.7, "clamp": 50.0}, {"cutoff": 0.7, "k_max": 50.0})]:
        _options.forget_specs()
        with pytest.warns(DeprecationWarning, match="is deprecated; use"):
            g_old = grad(backward=backward, **old)
        assert torch.equal(g_old, grad(backward=backward, **new)), backward
    with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
        svdlib.sqrtm(A, backward="clip", threshold=1.0, k_max=2.0)
    # a remedy's old option eps (its floor) where it cannot mean the shift: the record's call
    lam, U = torch.linalg.eigh(A.detach())
    with pytest.warns(DeprecationWarning, match="option 'eps' of backward='taylor' is deprecated"):
        old = remedies.taylor(lam, U, lam, U, eps=0.9)
    assert torch.equal(old, remedies.taylor(lam, U, lam, U, floor=0.9))
    # as a keyword of the public call, eps is the shift (and so, by the one rule, the floor)
    assert torch.equal(grad(backward="taylor", eps=1e-3), grad(backward="taylor", eps=1e-3, floor=1e-3))


def test_deprecated_solver_name_and_builder_keywords_warn():
    A = matrix_with_spectrum([0.5, 2.0, 8.0], seed=3)
    with pytest.warns(FutureWarning, match="solver='power_iteration' is deprecated"):
        lam_old, _ = svdlib.eigh(A, solver="power_iteration", iterations=50)
    lam_new, _ = svdlib.eigh(A, solver="power_iteration_forward", iterations=50)
    assert torch.equal(lam_old, lam_new)
    lam = torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match=r"k_taylor\(eps=...\) is deprecated"):
        assert torch.equal(remedies.k_taylor(lam, eps=0.15), remedies.k_taylor(lam, floor=0.15))
    with pytest.warns(DeprecationWarning, match=r"svdlib.fused.sqrtm is deprecated"):
        assert fused.sqrtm is svdlib.sqrtm


def test_shift_is_the_floor_unless_the_floor_is_given():
    """One rule in one place: eps (the diagonal shift) is the default eigenvalue floor."""
    assert _options.backward_spec("taylor", {}, shift=1e-2).as_dict()["floor"] == 1e-2
    assert _options.backward_spec("taylor", {"floor": 1e-6}, shift=1e-2).as_dict()["floor"] == 1e-6
    assert _options.backward_spec("taylor", {}, shift=0.0).as_dict()["floor"] == 1e-10
    assert _options.backward_spec("power_iteration", {}, shift=1e-3).as_dict()["floor"] == 1e-3
    assert "floor" not in _options.backward_spec("clip", {}, shift=1e-2).as_dict()
    # the effect, against an independent closed form: floor 0.25 clamps lam = 0.1 + 0.2 up
    lam = torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64)
    K = fused.k_matrix(lam, "taylor", degree=0, floor=0.25)
    assert K[1, 0] == pytest.approx(1 / 0.3) and K[2, 0] == pytest.approx(1.0)


def test_iterations_go_to_the_iterative_part_in_use():
    assert _options.iterations_target("newton_schulz", "auto", "power_iteration") == "newton_schulz"
    assert _options.iterations_target("eigh", "power_iteration_forward", "taylor") == "solver"
    assert _options.iterations_target("eigh", "auto", "power_iteration") == "remedy"
    assert _options.iterations_target("eigh", "auto", "taylor") is None
    A = matrix_with_spectrum([1.0, 2.0, 3.0, 5.0], seed=4)
    g = torch.randn(4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def dominant_grad(**kwargs):
        a = A.clone().requires_grad_()
        _, U = svdlib.eigh(a, **kwargs)
        (g * U[:, -1]).sum().backward()
        return a.grad

    # eigh's iterations reach the power_iteration remedy: n iterations == Taylor degree n on
    # the dominant eigenvector (Robust Differentiable SVD sec. 3.3); measured 1e-16; bound 1e-11
    for n in (2, 5):
        torch.testing.assert_close(dominant_grad(backward="power_iteration", iterations=n),
                                   dominant_grad(backward="taylor", degree=n, floor=1e-12), rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="disagree"):
        _options.backward_spec("power_iteration", {"iterations": 4}, iterations=3)


def test_options_are_validated_once_not_per_backward(monkeypatch):
    """The public call resolves the spec; the backward stage never validates again."""
    A = matrix_with_spectrum(torch.rand(2, 5, dtype=torch.float64) + 0.5, seed=5).requires_grad_()
    Q = svdlib.sqrtm(A, backward="taylor", degree=20)
    lam, U = svdlib.eigh(A, backward="pade", order=(3, 3))
    calls = []
    real = _options.backward_spec

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(_options, "backward_spec", counting)
    (Q.sum() + U.sum() + lam.sum()).backward()
    assert calls == [] and torch.isfinite(A.grad).all()


# ----------------------------------------------------------------------------- a new remedy
def k_gap_floor(lam: torch.Tensor, gap_floor: float = 0.5) -> torch.Tensor:
    """Toy remedy: 1/(lam_i - lam_j) with the gap floored at ``gap_floor`` (clip by another name),
    written here without svdlib's helpers."""
    diff = lam[..., :, None] - lam[..., None, :]
    n = lam.shape[-1]
    idx = torch.arange(n)
    sign = (idx[:, None] > idx[None, :]).to(lam.dtype) - (idx[:, None] < idx[None, :]).to(lam.dtype)
    return sign / diff.abs().clamp_min(gap_floor)


@pytest.fixture
def toy_remedy():
    record = register_backward(Remedy("toy_gap_floor", k_matrix=k_gap_floor, bound=lambda o: 1 / o["gap_floor"]))
    yield record
    svdlib.BACKWARDS.pop("toy_gap_floor")
    _options.forget_specs()


def test_a_remedy_is_one_function_and_one_registry_line(toy_remedy):
    """The toy remedy runs through eigh, sqrtm and a layer, and equals clip with k_max = 1/gap_floor
    (the same K~, written independently)."""
    assert "toy_gap_floor" in svdlib.BACKWARDS
    A = matrix_with_spectrum([[0.3, 0.5, 0.55, 2.0], [0.1, 0.1, 1.0, 1.2]], seed=6)
    W = matrix_with_spectrum([1.0, -2.0, 0.5, 3.0], seed=7)

    def grad(fn):
        a = A.clone().requires_grad_()
        fn(a).backward()
        return a.grad

    eig = lambda backward, **o: lambda a: ((W @ svdlib.eigh(a, backward=backward, **o)[1]) ** 2).sum()  # noqa: E731
    sq = lambda backward, **o: lambda a: (svdlib.sqrtm(a, backward=backward, **o) * W).sum()  # noqa: E731
    # measured 0 to 1e-16 here (the same K~, the same stage); bound 1e-13
    torch.testing.assert_close(grad(eig("toy_gap_floor", gap_floor=0.2)), grad(eig("clip", k_max=5.0)),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad(sq("toy_gap_floor", gap_floor=0.2)), grad(sq("clip", k_max=5.0)),
                               rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"valid options: \['gap_floor'\]"):
        svdlib.sqrtm(A, backward="toy_gap_floor", k_max=1.0)
    from svdlib import analysis
    assert analysis.k_bound("toy_gap_floor", gap_floor=0.25) == 4.0

    x = torch.randn(16, 4, 3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    outs = []
    for backward, opts in (("toy_gap_floor", {"gap_floor": 0.2}), ("clip", {"k_max": 5.0})):
        torch.manual_seed(0)
        layer = svdlib.nn.DecorrelatedBatchNorm2d(4, eps=1e-3, backward=backward, **opts).double()
        xi = x.clone().requires_grad_()
        (layer(xi) * x.flip(0)).sum().backward()
        outs.append(xi.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown option"):
        svdlib.nn.DecorrelatedBatchNorm2d(4, backward="toy_gap_floor", degree=3)


def test_layers_check_their_options_at_construction():
    with pytest.raises(ValueError, match=r"backward='taylor': option degree must be an integer >= 0"):
        svdlib.nn.CovariancePooling(8, reduced_dim=4, degree=-3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['threshold'\] for backward='taylor'"):
        svdlib.nn.DecorrelatedBatchNorm2d(8, threshold=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svdlib.nn.DecorrelatedBatchNorm2d(8, method="newton_schulz", iterations=5)  # NS steps, valid


# ----------------------------------------------------------------------------- every entry point
# Issue 17 item 5: the same bad value got different treatment depending on where it was written.
BAD_SETTINGS = [
    ("taylor", {"degree": -1}, r"backward='taylor': option degree must be an integer >= 0, got -1"),
    ("clip", {"k_max": 0}, r"backward='clip': option k_max must be a finite real number > 0, got 0"),
    ("clip", {"threshold": 0}, r"backward='clip': option k_max must be a finite real number > 0, got 0"),
    ("taylor", {"solver": "power_iteration_forward", "iterations": 0}, r"iterations must be an integer >= 1, got 0"),
    ("taylor", {"eps": math.nan}, r"eps must be a finite real number >= 0, got nan$"),
    ("taylor", {"eps": math.inf}, r"eps must be a finite real number >= 0, got inf$"),
    ("taylor", {"min_eigenvalue": math.nan}, r"min_eigenvalue must be a finite real number >= 0, got nan$"),
    ("taylor", {"floor": math.inf}, r"backward='taylor': option floor must be a finite real number > 0, got inf"),
    ("truncate", {"cutoff": math.nan}, r"backward='truncate': option cutoff must be a finite real number, got nan"),
    ("power_iteration", {"energy_tol": 2.0}, r"option energy_tol must be a finite real number >= 0 and <= 1, got 2.0"),
    ("taylor", {"compute_dtype": torch.float16}, r"compute_dtype must be None, torch.float32 or torch.float64"),
]


def _entry_points(backward, options):
    A = matrix_with_spectrum([1.0, 2.0, 3.0, 4.0], seed=0)
    x = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    yield "eigh", lambda: svdlib.eigh(A, backward=backward, **options)
    yield "sqrtm", lambda: svdlib.sqrtm(A, backward=backward, **options)
    yield "inv_sqrtm", lambda: svdlib.inv_sqrtm(A, backward=backward, **options)
    yield "powm", lambda: svdlib.powm(A, 0.3, backward=backward, **options)
    yield "DecorrelatedBatchNorm2d", lambda: svdlib.nn.DecorrelatedBatchNorm2d(4, backward=backward, **options)
    yield "CovariancePooling", lambda: svdlib.nn.CovariancePooling(4, backward=backward, **options)
    yield "whiten", lambda: svdlib.nn.whiten(x, backward=backward, **options)
    from svdlib.experiments.config import config_from_dict

    remedy_options = {k: v for k, v in options.items() if k != "solver"}
    if "compute_dtype" in remedy_options:  # written in a YAML file as a name
        remedy_options["compute_dtype"] = "float16"
    yield "config", lambda: config_from_dict({"backward": backward, "solver": options.get("solver", "auto"),
                                              "remedy_options": remedy_options})


@pytest.mark.parametrize("backward, options, message", BAD_SETTINGS,
                         ids=[f"{b}-{next(iter(o))}={list(o.values())[-1]}" for b, o, _ in BAD_SETTINGS])
def test_every_entry_point_refuses_a_bad_setting_with_the_same_message(backward, options, message):
    for where, call in _entry_points(backward, options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # clip's old name threshold
            with pytest.raises(ValueError, match=message):
                call()

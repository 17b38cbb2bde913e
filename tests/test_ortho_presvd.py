"""PreSVD: NOG/OLR as an optimizer step pre-hook (Song et al., ECCV 2022, sec. 5)."""
import numpy as np
import pytest
import torch
from torch import nn

from svdlib.ortho import PreSVD, orthogonal_weight, presvd_param_groups, spectral_norm

F64 = torch.float64




def _model(seed=0, conv_out=6):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, conv_out, 3, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(conv_out * 4 * 4, 3)
    ).double()


def _backward(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 6, 6, generator=gen, dtype=F64)
    y = torch.randint(3, (8,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def _u_vt(G):
    """Independent reference: U V^T of the out x (in*kh*kw) matrix by numpy's SVD."""
    U, _, Vh = np.linalg.svd(G.reshape(G.shape[0], -1).numpy(), full_matrices=False)
    return torch.from_numpy(U @ Vh).reshape(G.shape)


def _eta(W, G, lr):
    w, gv = W.reshape(-1).numpy(), G.reshape(-1).numpy()
    star = (w @ w) * (gv @ w) / ((w @ w) * (gv @ gv) + 2 * (gv @ w) ** 2)
    return star if 0 < star < lr else lr


def test_presvd_step_moves_the_weight_by_exactly_minus_eta_u_vt_with_plain_sgd():
    model = _model()
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1)
    presvd = PreSVD(opt, model[0], nog=True, olr=False)
    _backward(model)
    W0, G0 = model[0].weight.detach().clone(), model[0].weight.grad.detach().clone()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), W0 - 0.1 * _u_vt(G0), atol=1e-14, rtol=0)
    assert presvd.last.nog_applied and not presvd.last.olr_applied and presvd.last.eta == 0.1


def test_presvd_with_olr_uses_eta_star_of_the_post_nog_gradient_and_restores_lr():
    model = _model(conv_out=4)
    # a large base lr so that eta* < lr and the switch picks eta*
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True, history=True)
    for step in range(3):
        _backward(model, seed=step)
        W0, G0 = model[0].weight.detach().clone(), model[0].weight.grad.detach().clone()
        R = _u_vt(G0)
        eta = _eta(W0, R, 10.0)
        opt.step()
        assert presvd.last.eta == pytest.approx(eta, rel=1e-12)
        torch.testing.assert_close(model[0].weight.detach(), W0 - eta * R, atol=1e-12, rtol=0)
        assert opt.param_groups[1]["lr"] == 10.0  # restored after the step
        M = model[0].weight.detach().reshape(4, -1)
        err = torch.linalg.matrix_norm(M @ M.T - torch.eye(4, dtype=F64))
        assert presvd.last.orthogonality_error == pytest.approx(float(err), rel=1e-12)
    assert any(r.olr_applied for r in presvd.history) and len(presvd.history) == 3


def test_momentum_and_weight_decay_act_on_the_modified_gradient():
    model = _model()
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.05, momentum=0.9, weight_decay=5e-4)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    W = model[0].weight.detach().clone()
    buf = None
    for step in range(3):
        _backward(model, seed=10 + step)
        G = model[0].weight.grad.detach().clone()
        torch.testing.assert_close(model[0].weight.detach(), W)
        R = _u_vt(G)
        eta = _eta(W, R, 0.05)
        d = R + 5e-4 * W  # torch SGD: weight decay, then momentum, on the (NOG) gradient
        buf = d if buf is None else 0.9 * buf + d
        W = W - eta * buf
        opt.step()
        assert presvd.last.eta == pytest.approx(eta, rel=1e-12)
    torch.testing.assert_close(model[0].weight.detach(), W, atol=1e-12, rtol=0)


def test_olr_compares_with_the_scheduled_lr_and_the_schedule_is_untouched():
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    etas = []
    for step in range(6):
        scheduled = 10.0 * 0.1**step
        assert opt.param_groups[1]["lr"] == pytest.approx(scheduled, rel=1e-12)
        _backward(model, seed=step)
        W0, R = model[0].weight.detach().clone(), _u_vt(model[0].weight.grad.detach())
        expected = _eta(W0, R, scheduled)
        opt.step()
        sched.step()
        assert presvd.last.lr == pytest.approx(scheduled, rel=1e-12)
        assert presvd.last.eta == pytest.approx(expected, rel=1e-12)
        etas.append(presvd.last.olr_applied)
    assert etas[0] and not etas[-1]  # eta* < 10 early on, but not below the decayed lr
    assert sched.get_last_lr()[1] == pytest.approx(10.0 * 0.1**6, rel=1e-12)


def test_reference_group_takes_the_other_layers_lr():
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0], lr=1e-6), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True, reference_group=0)
    _backward(model)
    W0, R = model[0].weight.detach().clone(), _u_vt(model[0].weight.grad.detach())
    opt.step()
    assert presvd.last.lr == 10.0 and presvd.last.eta == pytest.approx(_eta(W0, R, 10.0), rel=1e-12)
    assert opt.param_groups[1]["lr"] == 1e-6


def test_orthogonal_weight_nog_acts_on_the_unconstrained_parameter():
    model = _model()
    orthogonal_weight(model[0])
    X = model[0].parametrizations.weight.original
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1)
    presvd = PreSVD(opt, model[0], nog=True, olr=False)
    assert presvd.parameter is X
    _backward(model)
    X0, G0 = X.detach().clone(), X.grad.detach().clone()
    opt.step()
    torch.testing.assert_close(X.detach(), X0 - 0.1 * _u_vt(G0), atol=1e-14, rtol=0)
    M = model[0].weight.detach().reshape(6, -1)
    torch.testing.assert_close(M @ M.T, torch.eye(6, dtype=F64), atol=1e-10, rtol=0)


def test_spectral_norm_presvd_acts_on_the_unnormalised_weight():
    model = _model()
    spectral_norm(model[0])
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1)
    presvd = PreSVD(opt, model[0], nog=True, olr=False)
    assert presvd.parameter is model[0].parametrizations.weight.original


def test_group_sharing_with_other_layers_is_refused_with_a_hint():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="own group.*presvd_param_groups"):
        PreSVD(opt, model[0])


def test_missing_group_is_created_and_detach_restores_plain_sgd():
    model = _model()
    opt = torch.optim.SGD(list(model[3].parameters()), lr=0.1)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is model[0].weight
    with pytest.raises(ValueError, match="already attached"):
        PreSVD(opt, model[0])
    presvd.detach()
    _backward(model)
    W0, G0 = model[0].weight.detach().clone(), model[0].weight.grad.detach().clone()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), W0 - 0.1 * G0, atol=1e-15, rtol=0)
    PreSVD(opt, model[0]).detach()  # can be attached again after detach


def test_zero_none_and_nonfinite_gradients_are_safe():
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=0.1)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    opt.step()  # no backward yet: no gradient
    assert presvd.last.skipped == "no gradient"
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    W0 = model[0].weight.detach().clone()
    opt.step()
    assert presvd.last.skipped is None and presvd.last.eta == 0.1 and not presvd.last.olr_applied
    assert torch.equal(model[0].weight.detach(), W0)  # zero gradient -> zero NOG step, no NaN
    model[0].weight.grad = torch.full_like(W0, float("nan"))
    with torch.no_grad():
        opt.step()
    assert presvd.last.skipped == "non-finite gradient" and opt.param_groups[1]["lr"] == 0.1


def test_lr_is_restored_when_a_step_raises_between_the_hooks():
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)

    def boom(optimizer, args, kwargs):
        raise RuntimeError("boom")

    handle = opt.register_step_pre_hook(boom)  # runs after PreSVD's pre-hook
    _backward(model)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert opt.param_groups[1]["lr"] != 10.0  # OLR's eta is still in place ...
    handle.remove()
    presvd.detach()
    assert opt.param_groups[1]["lr"] == 10.0  # ... until detach (or the next pre-hook) restores it


def test_presvd_param_groups_and_validation():
    model = _model()
    groups = presvd_param_groups(model, model[0], lr=0.01)
    assert [len(g["params"]) for g in groups] == [2, 1] and groups[1]["lr"] == 0.01
    with pytest.raises(ValueError, match="submodule"):
        presvd_param_groups(model, nn.Linear(2, 2))
    opt = torch.optim.SGD(groups, lr=0.1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        PreSVD("sgd", model[0])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        PreSVD(opt, model[3], name="bias")
    with pytest.raises(ValueError, match="must be an nn.Parameter"):
        PreSVD(opt, model[0], name="bias")  # the conv has bias=False
    with pytest.raises(ValueError, match="nog_method"):
        PreSVD(opt, model[0], nog_method="qr")


# --------------------------------------------------------------------------- resume
def test_presvd_keeps_acting_after_load_state_dict_into_the_same_optimizer():
    """``load_state_dict`` replaces the param-group dicts; NOG and OLR must act on the new ones."""
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    for step in range(2):
        if step == 1:
            old_group = opt.param_groups[1]
            opt.load_state_dict(opt.state_dict())
            assert opt.param_groups[1] is not old_group  # the dict really was replaced
            assert presvd.group is opt.param_groups[1]
        _backward(model, seed=20 + step)
        W0, R = model[0].weight.detach().clone(), _u_vt(model[0].weight.grad.detach())
        eta = _eta(W0, R, 10.0)
        assert eta < 10.0  # OLR's eta*, not the group's lr, must move the weight
        opt.step()
        assert presvd.last.olr_applied and presvd.last.eta == pytest.approx(eta, rel=1e-12)
        torch.testing.assert_close(model[0].weight.detach(), W0 - eta * R, atol=1e-12, rtol=0)
        assert opt.param_groups[1]["lr"] == 10.0  # scheduled lr restored in the live group


@pytest.mark.parametrize("olr", [True, False])
@pytest.mark.parametrize("attach", ["before_load", "after_load"])
def test_presvd_resumes_on_a_fresh_optimizer_and_model(attach, olr):
    """Checkpoint after one step, rebuild model + optimizer + PreSVD, load, step: the update is
    the momentum step on U V^T with OLR's eta (or the *loaded* lr), whichever the attach order."""
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0, momentum=0.9)
    PreSVD(opt, model[0], nog=True, olr=olr)
    _backward(model, seed=30)
    buf = _u_vt(model[0].weight.grad.detach())  # first momentum buffer = the NOG gradient
    opt.step()
    model_sd, opt_sd = model.state_dict(), opt.state_dict()

    fresh = _model(seed=99, conv_out=4)
    fresh.load_state_dict(model_sd)
    # a different constructor lr: the loaded 10.0 must be the lr that OLR compares against
    opt2 = torch.optim.SGD(presvd_param_groups(fresh, fresh[0]), lr=123.0, momentum=0.9)
    if attach == "before_load":
        presvd2 = PreSVD(opt2, fresh[0], nog=True, olr=olr)
        opt2.load_state_dict(opt_sd)
    else:
        opt2.load_state_dict(opt_sd)
        presvd2 = PreSVD(opt2, fresh[0], nog=True, olr=olr)
    _backward(fresh, seed=31)
    W0, R = fresh[0].weight.detach().clone(), _u_vt(fresh[0].weight.grad.detach())
    eta = _eta(W0, R, 10.0) if olr else 10.0
    opt2.step()
    assert presvd2.last.lr == 10.0 and presvd2.last.eta == pytest.approx(eta, rel=1e-12)
    assert presvd2.last.olr_applied == olr and presvd2.last.nog_applied
    torch.testing.assert_close(fresh[0].weight.detach(), W0 - eta * (0.9 * buf + R), atol=1e-12, rtol=0)
    assert opt2.param_groups[1]["lr"] == 10.0


def test_presvd_raises_when_its_group_no_longer_holds_the_parameter():
    model = _model(conv_out=4)
    opt = torch.optim.SGD(presvd_param_groups(model, model[0]), lr=10.0)
    presvd = PreSVD(opt, model[0], nog=True, olr=True)
    opt.param_groups.reverse()  # the Pre-SVD group moves from index 1 to 0
    _backward(model)
    W0 = model[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"param_groups\[1\].*no longer holds.*now in group 0"):
        opt.step()
    assert torch.equal(model[0].weight.detach(), W0)  # nothing was updated
    with pytest.raises(RuntimeError, match="no longer holds"):
        presvd.group
    presvd.detach()
    opt.param_groups.reverse()

"""Config loading, profiles, overrides and the shipped configs/*.yaml (svdlib.experiments.config)."""
from __future__ import annotations

import glob
import os

import pytest

from svdlib.experiments.config import (ExperimentConfig, apply_overrides, config_from_dict,
                                       expand_sweep, field_names, load_config)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def small_yaml(tmp_path):
    _write(tmp_path / "base.yaml", """
dataset: cifar100
arch: resnet50
epochs: 350
lr_milestones: [100, 200, 300]
weight_decay: 5e-4
remedy_options: {degree: 9}
profiles:
  quick: {dataset: digits, arch: resnet_tiny, epochs: 2, lr_milestones: [1]}
""")
    return _write(tmp_path / "child.yaml", """
base: base.yaml
name: child
treatments: [nog, olr]
profiles:
  quick: {epochs: 3}
""")


def test_profiles_and_base_merge(small_yaml):
    paper = load_config(small_yaml, profile="paper")
    assert (paper.profile, paper.dataset, paper.arch, paper.epochs) == ("paper", "cifar100", "resnet50", 350)
    # YAML 1.1 reads "5e-4" as a string; float fields accept float literals
    assert paper.weight_decay == 5e-4 and isinstance(paper.weight_decay, float)
    quick = load_config(small_yaml, profile="quick")
    # base quick section, then the child's quick section (epochs 3 wins over the base's 2)
    assert (quick.profile, quick.dataset, quick.arch, quick.epochs) == ("quick", "digits", "resnet_tiny", 3)
    assert quick.lr_milestones == [1] and quick.treatments == ["nog", "olr"] and quick.name == "child"


def test_overrides_are_typed(small_yaml):
    cfg = load_config(small_yaml, overrides=["remedy_options.degree=19", "lr=1", "blocks=[1, 2, 1, 1]",
                                             "hybrid_switch_epoch=null", "treatments=[sn]"])
    assert cfg.remedy_options == {"degree": 19}
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.blocks == [1, 2, 1, 1] and cfg.hybrid_switch_epoch is None and cfg.treatments == ["sn"]
    with pytest.raises(TypeError, match="epochs must be int, got 1.5"):
        load_config(small_yaml, overrides=["epochs=1.5"])
    with pytest.raises(TypeError, match="deterministic must be bool"):
        load_config(small_yaml, overrides=["deterministic=maybe"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lrr'\].*valid keys are: name"):
        load_config(small_yaml, overrides=["lrr=0.1"])
    with pytest.raises(ValueError, match="'profile' cannot be overridden"):
        load_config(small_yaml, overrides=["profile=paper"])
    with pytest.raises(ValueError, match="treatments must be one of"):
        load_config(small_yaml, overrides=["treatments=[xyz]"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(small_yaml, overrides=["epochs"])
    with pytest.raises(ValueError, match="not a dict field"):
        load_config(small_yaml, overrides=["lr.x=1"])


def test_file_errors(tmp_path, small_yaml):
    bad = _write(tmp_path / "bad.yaml", "lerning_rate: 0.1\nprofiles: {quick: {}}\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lerning_rate'\]"):
        load_config(bad)
    noquick = _write(tmp_path / "noquick.yaml", "epochs: 3\n")
    with pytest.raises(ValueError, match="no 'profiles: quick:' section"):
        load_config(noquick, profile="quick")
    assert load_config(noquick, profile="paper").epochs == 3
    loop_a = _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        load_config(loop_a, profile="paper")
    with pytest.raises(ValueError, match="profile must be one of"):
        load_config(small_yaml, profile="fast")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="group_size must divide the stem width"):
        ExperimentConfig(width=16, group_size=6)
    with pytest.raises(ValueError, match="kind must be one of"):
        ExperimentConfig(kind="svd")
    with pytest.raises(ValueError, match="lr_milestones must be increasing"):
        ExperimentConfig(lr_milestones=[3, 1])
    with pytest.raises(ValueError, match="sweep keys must be config fields"):
        ExperimentConfig(sweep={"nope": [1]})
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({"epochs": 1, "epoch": 2})


def test_meta_layer_fields_are_checked_when_the_config_is_built(small_yaml):
    """backward, solver and remedy_options fail at load, with the matrix functions' own checks."""
    with pytest.raises(ValueError, match=r"backward must be one of \["):
        load_config(small_yaml, overrides=["backward=taylr"])
    with pytest.raises(ValueError, match=r"remedy_options: unknown option\(s\) \['degre'\] for backward='taylor'"):
        load_config(small_yaml, overrides=["remedy_options.degre=3"])
    with pytest.raises(ValueError, match=r"remedy_options: backward='taylor': option degree must be an integer >= 0"):
        load_config(small_yaml, overrides=["remedy_options.degree=-2"])
    with pytest.raises(ValueError, match="remedy_options: iterations must be an integer >= 1"):
        load_config(small_yaml, overrides=["remedy_options.iterations=0"])
    with pytest.raises(ValueError, match=r"solver must be one of \['auto'"):
        load_config(small_yaml, overrides=["solver=lapack"])
    cfg = load_config(small_yaml, overrides=["solver=power_iteration_forward", "remedy_options={iterations: 19}"])
    assert cfg.solver == "power_iteration_forward"
    # the old place of the solver moves to the field, with a warning
    with pytest.warns(FutureWarning) as record:
        old = ExperimentConfig(backward="exact", remedy_options={"solver": "power_iteration", "iterations": 19})
    messages = " ".join(str(w.message) for w in record)
    assert "remedy_options.solver is deprecated" in messages and "solver='power_iteration' is deprecated" in messages
    assert old.solver == "power_iteration_forward" and old.remedy_options == {"iterations": 19}
    with pytest.raises(ValueError, match="solver is given twice"):
        ExperimentConfig(solver="torch", remedy_options={"solver": "power_iteration_forward"})


def test_expand_sweep_is_the_cartesian_product():
    cfg = ExperimentConfig(width=64, sweep={"group_size": [4, 8, 16], "seed": [0, 1]})
    runs = expand_sweep(cfg)
    assert [s for s, _ in runs][:3] == ["group_size=4,seed=0", "group_size=4,seed=1", "group_size=8,seed=0"]
    assert sorted((c.group_size, c.seed) for _, c in runs) == [(g, s) for g in (4, 8, 16) for s in (0, 1)]
    assert all(c.sweep == {} for _, c in runs)
    assert expand_sweep(ExperimentConfig()) == [("", ExperimentConfig())]
    # an explicit override pins a swept field
    pinned = apply_overrides(cfg, ["group_size=8"])
    assert pinned.sweep == {"seed": [0, 1]} and [c.group_size for _, c in expand_sweep(pinned)] == [8, 8]


def test_help_lists_every_field(capsys):
    from svdlib.experiments.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in field_names():
        assert f"  {name} (" in text, name


# --------------------------------------------------------------------------- shipped configs
CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))

# (file, treatments) for every row of ECCV 2022 Table 4 (dbn_) and Table 5 (gcp_)
ECCV_ROWS = {"svd": [], "sn": ["sn"], "ol": ["ol"], "ow": ["ow"], "nog": ["nog"], "olr": ["olr"],
             "nog_ow": ["nog", "ow"], "nog_ow_olr": ["nog", "ow", "olr"]}


def test_shipped_configs_cover_the_tables():
    names = {os.path.basename(p)[:-5] for p in CONFIGS}
    for family in ("dbn", "gcp"):
        for row in list(ECCV_ROWS) + ["newton_schulz", "divided_difference"]:
            assert f"{family}_{row}" in names
    for row in ("svd", "pi", "svd_clip", "svd_pi", "svd_taylor", "divided_difference", "batchnorm"):
        assert f"zca_{row}" in names
    for row in ("ns_svd", "svd", "newton_schulz"):
        assert f"hybrid_{row}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_shipped_config_profiles(path):
    name = os.path.basename(path)[:-5]
    quick, paper = load_config(path, "quick"), load_config(path, "paper")
    assert quick.name == paper.name == name and paper.reference
    # the quick profile never needs a dataset on disk or paper-length training
    assert quick.dataset in ("digits", "synthetic") and quick.epochs <= 5 and quick.arch == "resnet_tiny"
    assert all(c.profile == p for c, p in ((quick, "quick"), (paper, "paper")))
    family, _, row = name.partition("_")
    if family in ("dbn", "gcp") and row in ECCV_ROWS:
        assert sorted(paper.treatments) == sorted(ECCV_ROWS[row])
    if family == "dbn":  # ECCV 2022 appendix B.1
        assert (paper.dataset, paper.arch, paper.kind, paper.stem) == ("cifar100", "resnet50", "zca", "cifar")
        assert (paper.epochs, paper.lr, paper.momentum, paper.weight_decay, paper.batch_size) == (350, 0.1, 0.9, 5e-4, 128)
        assert paper.lr_milestones == [100, 200, 300] and paper.lr_gamma == 0.1
        assert len(paper.sweep["seed"]) == 10
    if family == "gcp":  # ECCV 2022 appendix B.2
        assert (paper.dataset, paper.arch, paper.kind) == ("imagefolder", "resnet18", "gcp")
        assert (paper.epochs, paper.lr, paper.weight_decay, paper.batch_size) == (60, 0.1, 1e-4, 256)
        assert paper.lr_milestones == [30, 45] and (paper.resize_size, paper.image_size) == (256, 224)
    if family == "zca":  # TPAMI 2021 sec. 5.1 / Table IV
        assert paper.dataset == "cifar10" and paper.epochs == 350 and paper.lr_milestones == [100, 200, 300]
        if paper.kind == "zca":
            assert paper.sweep["group_size"] == [4, 8, 16, 32, 64] and len(paper.sweep["seed"]) == 15
            assert quick.sweep["group_size"] == [4, 8, 16, 32, 64]
    if name == "hybrid_ns_svd":  # ICCV 2021: switch at the last decay
        assert paper.hybrid_switch_epoch == paper.lr_milestones[-1] == 45
        assert quick.hybrid_switch_epoch == quick.lr_milestones[-1]
    if row == "divided_difference":
        assert paper.backward == "divided_difference" and paper.remedy_options == {}
    if name == "zca_pi":  # TPAMI Table IV row "PI": the power-iteration forward, 19 steps
        assert paper.solver == "power_iteration_forward" and paper.remedy_options == {"iterations": 19}
    for _, c in expand_sweep(quick):
        c.validate()


def test_long_profile_is_quick_with_the_papers_replicate_counts():
    # "long": the quick scale, the papers' replicates (10 runs per ECCV row, 15 trials per Table IV cell)
    for name, seeds in (("dbn_nog", 10), ("gcp_svd", 10), ("zca_svd_taylor", 15), ("hybrid_ns_svd", 10)):
        quick = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.yaml"), profile="quick")
        long = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.yaml"), profile="long")
        assert long.profile == "long" and len(long.sweep["seed"]) == seeds and len(quick.sweep["seed"]) >= 3
        same = {k: v for k, v in quick.to_dict().items() if k not in ("profile", "sweep")}
        assert {k: long.to_dict()[k] for k in same} == same, name

"""Experiment configuration: one typed dataclass, YAML files with profiles, ``--set`` overrides.

A config file describes one paper table row (or figure). Its top-level keys are the **paper**
protocol (CIFAR/ImageNet, ResNet-50/18, 350/60 epochs, ...); a ``profiles:`` section holds
the overrides of each named profile, so the *same* file runs at the scale of the papers or at
the ``quick`` scale (digits, tiny ResNet, a few epochs) that finishes on a CPU::

    base: _base/dbn.yaml        # optional: another YAML merged first (path relative to this file)
    name: dbn_nog
    treatments: [nog]
    profiles:
      quick: {dataset: digits, arch: resnet_tiny, epochs: 3}
      paper: {}

Resolution order (later wins): base file top level, this file's top level, the base file's
``profiles[profile]``, this file's ``profiles[profile]``, then ``--set key=value`` overrides.
A profile section therefore overrides top-level keys, including those of the child file; keep
profile sections to scale-related fields (data, model size, epochs, schedule, sweep).

Values given with ``--set`` are parsed with ``yaml.safe_load`` and type-checked against the
field annotations (an int is accepted for a float field). Dict fields take dotted keys:
``--set remedy_options.degree=19``. Unknown keys are errors that list the valid fields.

The meta layer's ``method``, ``backward``, ``solver`` and ``remedy_options`` are checked when
the config is built (loading a file, an override, ``replace``), with the same function the
matrix functions use (:func:`svdlib._options.check_matrix_function_options`): an unknown
remedy, solver or option, or a value out of range, fails here, not at the first backward.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from svdlib._registry import DEFAULT_BACKWARD

__all__ = [
    "ExperimentConfig",
    "PROFILES",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "expand_sweep",
    "sweep_folder_part",
    "config_help",
    "field_names",
    "RUNTIME_ONLY_FIELDS",
]

#: Profiles a config file may define. ``quick``: digits/synthetic data, tiny models, CPU minutes.
#: ``long``: the quick scale with the papers' replicate counts (its section is applied over
#: ``quick``'s). ``paper``: the papers' full protocol (needs a GPU and the datasets).
PROFILES = ("quick", "long", "paper")

#: Fields that change how a run executes but not what it computes; a finished run is reused
#: by ``resume=True`` even when these differ.
RUNTIME_ONLY_FIELDS = ("description", "reference", "device", "num_threads", "num_workers", "progress",
                       "sweep")

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "imagefolder")
ARCHS = ("resnet_tiny", "resnet18", "resnet50")
KINDS = ("zca", "gcp", "bn")
STEMS = ("cifar", "imagenet")
BLOCK_NORMS = ("bn", "gn", "none")
METHODS = ("eigh", "newton_schulz")
TREATMENTS = ("sn", "ol", "ow", "nog", "olr")
META_DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its documentation in ``metadata['help']``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ExperimentConfig:
    """Every knob of one training run; each field is documented in its ``metadata['help']``
    (``python -m svdlib.experiments.train --help`` prints them all, see :func:`config_help`).

    Paper protocols (defaults of the shipped ``configs/*.yaml``): Song et al., ECCV 2022
    ("Improving Covariance Conditioning of the SVD Meta-layer by Orthogonality"), appendix B.1
    (decorrelated BN: ResNet-50, CIFAR, 350 epochs, lr 0.1 /10 every 100, wd 5e-4, batch 128)
    and B.2 (GCP: ResNet-18, ImageNet, 60 epochs, lr 0.1 /10 at 30 and 45, wd 1e-4, batch 256);
    Wang et al., TPAMI 2021 ("Robust Differentiable SVD"), sec. 5.1 and Table II; Song et al.,
    ICCV 2021 ("Why Approximate Matrix Square Root Outperforms Accurate SVD in GCP"), hybrid
    protocol.
    """

    # ----- run identity --------------------------------------------------------------------
    name: str = _f("experiment", "Run name, recorded in the summary.")
    description: str = _f("", "Free text describing the run.")
    reference: str = _f("", "The paper table/figure (and row) this config reproduces.")
    profile: str = _f("quick", "Profile the config was resolved with: 'quick', 'long' or 'paper'. Set by "
                      "load_config / --profile; labels every result.")
    seed: int = _f(0, "Seed of model init, data order and augmentation.")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms(warn_only) and no cuDNN "
                             "benchmark during the run.")
    device: str = _f("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'.")
    num_threads: int = _f(0, "torch.set_num_threads during the run (CPU intra-op threads); 0 = "
                          "leave torch's setting. 1 is fastest for the tiny quick-profile models "
                          "on a busy machine.")

    # ----- data ------------------------------------------------------------------------------
    dataset: str = _f("digits", "One of digits (scikit-learn's 8x8 handwritten digits), synthetic "
                      "(class-dependent random images), cifar10, cifar100, imagefolder.")
    data_root: str = _f("data", "Directory holding the dataset: cifar-10-batches-py/ or "
                        "cifar-100-python/ for CIFAR, <root>/train/<class>/ and <root>/val/<class>/ "
                        "for imagefolder.")
    download: bool = _f(False, "Let torchvision download CIFAR into data_root (needs network).")
    data_seed: int = _f(0, "Seed of the digits train/test split, the synthetic templates and the "
                        "train_subset/test_subset choice (fixed across run seeds).")
    image_size: int = _f(16, "Side of the images fed to the network: digits are resized to it "
                         "(8 = native), synthetic images are generated at it, imagefolder images are "
                         "randomly cropped to it (224 in the papers). Ignored for CIFAR (32).")
    resize_size: int = _f(256, "imagefolder: images are first resized to resize_size x resize_size.")
    in_channels: int = _f(3, "Image channels; the grayscale digits are replicated to this many.")
    num_classes: int = _f(0, "Number of classes; 0 = taken from the dataset.")
    train_subset: int = _f(0, "Use only this many training images (fixed by data_seed); 0 = all.")
    test_subset: int = _f(0, "Use only this many test images (fixed by data_seed); 0 = all.")
    augment: bool = _f(True, "Training augmentation: CIFAR random crop 32 with padding 4 + "
                       "horizontal flip; imagefolder random crop + flip. Not used for digits/synthetic.")
    digits_test_fraction: float = _f(0.25, "Fraction of the 1797 digits held out for testing.")
    synthetic_train_size: int = _f(512, "Number of synthetic training images.")
    synthetic_test_size: int = _f(256, "Number of synthetic test images.")
    synthetic_classes: int = _f(10, "Number of synthetic classes.")
    batch_size: int = _f(128, "Global training batch size (split evenly across DDP ranks).")
    test_batch_size: int = _f(256, "Evaluation batch size per rank.")
    drop_last: bool = _f(True, "Drop the last incomplete training batch (a covariance needs "
                         "more than one sample).")
    num_workers: int = _f(0, "DataLoader worker processes (imagefolder only; in-memory datasets "
                          "are batched in the main process).")

    # ----- model -----------------------------------------------------------------------------
    arch: str = _f("resnet_tiny", "resnet18 (BasicBlock [2,2,2,2]), resnet50 (Bottleneck [3,4,6,3]) "
                   "or resnet_tiny (BasicBlock [1,1,1,1]).")
    kind: str = _f("zca", "zca: the BN after the 3x3 stem conv is svdlib.nn.DecorrelatedBatchNorm2d "
                   "(the stem conv is the Pre-SVD layer); gcp: global average pooling replaced by "
                   "svdlib.nn.CovariancePooling (its input conv is the Pre-SVD layer); bn: plain "
                   "BatchNorm baseline.")
    width: int = _f(64, "Channels of the first residual stage; later stages double it.")
    stem_width: int = _f(0, "Output channels of the stem conv (the whitened features for kind "
                         "zca); 0 = width.")
    blocks: Optional[list[int]] = _f(None, "Blocks per stage, overriding the arch's (4 stages).")
    stem: str = _f("cifar", "cifar: 3x3 conv stride 1, no max-pool (32x32 inputs, ECCV appendix "
                   "B.1); imagenet: 7x7 conv stride 2 + 3x3 max-pool.")
    last_stride: int = _f(2, "Stride of the last residual stage (1 keeps a larger final feature "
                          "map, as iSQRT-COV-style GCP models do).")
    block_norm: str = _f("bn", "Normalisation inside residual blocks: bn, gn (GroupNorm, batch "
                         "independent) or none.")

    # ----- meta layer ------------------------------------------------------------------------
    method: str = _f("eigh", "Matrix function method of the meta layer: eigh (the SVD spine) or "
                     "newton_schulz (iSQRT-COV).")
    backward: str = _f(DEFAULT_BACKWARD, "Backward remedy name from svdlib.BACKWARDS (exact, clip, taylor, "
                       "pade, power_iteration, truncate, divided_difference).")
    solver: str = _f("auto", "Forward eigensolver of the meta layer, a name of svdlib.SOLVERS: auto, "
                     "torch, cusolver_batched, or power_iteration_forward (the 'PI' baseline, "
                     "differentiated by autograd; backward is then not used).")
    remedy_options: dict = _f({}, "Keyword options of the remedy, e.g. {degree: 9} (taylor), "
                              "{k_max: 100} (clip), and of the matrix function: {iterations: 19} "
                              "(steps of the iterative part in use: Newton-Schulz, the "
                              "power_iteration_forward solver or the power_iteration remedy), "
                              "eps, min_eigenvalue, compute_dtype.")
    layer_options: dict = _f({}, "Extra keyword arguments passed to the meta layer's constructor.")
    group_size: int = _f(64, "zca: channels per whitening group (the covariance dimension d).")
    zca_eps: float = _f(1e-2, "zca: eps*I added to the covariance (1e-2 in the ECCV code).")
    zca_momentum: float = _f(0.1, "zca: momentum of the running statistics.")
    gcp_reduced_dim: int = _f(256, "gcp: channels after the 1x1 reduction conv (the covariance "
                              "dimension; 256 in the papers).")
    meta_dtype: str = _f("float64", "Compute dtype of the meta layer (float32 or float64); the "
                         "meta layer never runs under autocast.")
    hybrid_switch_epoch: Optional[int] = _f(None, "Hybrid protocol (ICCV 2021): epochs before this "
                                            "use method newton_schulz, epochs from it on use "
                                            "`method`. null = off.")

    # ----- orthogonal treatments of the Pre-SVD layer (ECCV 2022) ------------------------------
    treatments: list[str] = _f([], "Any of sn (spectral norm, eq. 11), ol (orthogonal loss, eq. 12), "
                               "ow (orthogonal weight, eq. 13), nog (nearest orthogonal gradient, "
                               "eq. 16-17), olr (optimal learning rate, eq. 20-21).")
    ol_weight: float = _f(1e-2, "Weight of the orthogonal loss added to the objective (the paper "
                          "does not state it).")

    # ----- optimisation ----------------------------------------------------------------------
    epochs: int = _f(2, "Training epochs.")
    lr: float = _f(0.1, "Initial learning rate (SGD).")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(5e-4, "SGD weight decay (5e-4 CIFAR, 1e-4 ImageNet in the papers).")
    nesterov: bool = _f(False, "Nesterov momentum.")
    lr_milestones: list[int] = _f([], "Epochs at which the learning rate is multiplied by lr_gamma.")
    lr_gamma: float = _f(0.1, "Learning-rate decay factor at each milestone.")
    grad_clip_norm: float = _f(0.0, "Clip the total gradient norm to this value; 0 = no clipping "
                               "(the ICCV 2021 GCP code clips at 5).")
    amp: bool = _f(False, "Mixed precision for the network (the meta layer stays in meta_dtype).")
    max_steps_per_epoch: int = _f(0, "Stop each epoch after this many steps; 0 = full epoch.")

    # ----- logging ---------------------------------------------------------------------------
    log_every: int = _f(10, "Write a step line to metrics.jsonl every this many steps (and at the "
                        "first step).")
    progress: bool = _f(True, "Show tqdm progress bars (also off when TQDM_DISABLE is set).")
    sweep: dict = _f({}, "Grid for notebooks: {field: [values]}; expand_sweep() yields one config "
                     "per combination. train() itself ignores it.")

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "ExperimentConfig":
        """Check types and allowed values; raise ValueError/TypeError naming the field."""
        hints = _hints()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        _choice("profile", self.profile, PROFILES)
        _choice("device", self.device, DEVICES)
        _choice("dataset", self.dataset, DATASETS)
        _choice("arch", self.arch, ARCHS)
        _choice("kind", self.kind, KINDS)
        _choice("stem", self.stem, STEMS)
        _choice("block_norm", self.block_norm, BLOCK_NORMS)
        _choice("method", self.method, METHODS)
        self._check_meta_layer()
        _choice("meta_dtype", self.meta_dtype, META_DTYPES)
        for t in self.treatments:
            _choice("treatments", t, TREATMENTS)
        if len(set(self.treatments)) != len(self.treatments):
            raise ValueError(f"treatments must not repeat a name, got {self.treatments}")
        for name in ("image_size", "resize_size", "in_channels", "batch_size", "test_batch_size",
                     "width", "group_size", "gcp_reduced_dim", "epochs", "log_every",
                     "synthetic_train_size", "synthetic_test_size", "synthetic_classes",
                     "last_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_classes", "train_subset", "test_subset", "num_workers", "stem_width",
                     "max_steps_per_epoch", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip_norm", "zca_eps", "ol_weight", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.digits_test_fraction < 1.0:
            raise ValueError(f"digits_test_fraction must be in (0, 1), got {self.digits_test_fraction}")
        if not 0.0 < self.zca_momentum <= 1.0:
            raise ValueError(f"zca_momentum must be in (0, 1], got {self.zca_momentum}")
        if self.blocks is not None and (len(self.blocks) != 4 or min(self.blocks) < 1):
            raise ValueError(f"blocks must be 4 positive integers (one per stage), got {self.blocks}")
        if self.kind == "zca" and self.effective_stem_width % self.group_size != 0:
            raise ValueError(
                f"group_size must divide the stem width ({self.effective_stem_width}) for kind "
                f"'zca', got group_size={self.group_size}")
        if sorted(self.lr_milestones) != list(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing, got {self.lr_milestones}")
        if self.hybrid_switch_epoch is not None and self.hybrid_switch_epoch < 0:
            raise ValueError(f"hybrid_switch_epoch must be >= 0 or null, got {self.hybrid_switch_epoch}")
        longest = 0
        for key, values in self.sweep.items():
            if key not in field_names() or key == "sweep":
                raise ValueError(f"sweep keys must be config fields, got {key!r}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"sweep[{key!r}] must be a non-empty list, got {values!r}")
            longest += 1 + max(len(os.fsencode(sweep_folder_part(key, v))) for v in values)
        if longest - 1 > _MAX_FOLDER_NAME:
            raise ValueError(
                f"sweep run folder names (key=value,...) would be up to {longest - 1} bytes long, "
                f"more than a file system allows ({_MAX_FOLDER_NAME}); sweep fewer fields or "
                "shorter values")
        return self

    def _check_meta_layer(self) -> None:
        """backward, solver and remedy_options, checked as the matrix function will check them."""
        import svdlib
        from svdlib import _options

        if "solver" in self.remedy_options:  # older configs carried the solver in remedy_options
            import warnings

            options = dict(self.remedy_options)
            moved = options.pop("solver")
            if self.solver not in ("auto", moved):
                raise ValueError(f"solver is given twice: solver={self.solver!r} and "
                                 f"remedy_options.solver={moved!r}")
            warnings.warn("remedy_options.solver is deprecated; set the config field 'solver' "
                          "(see CHANGELOG.md)", FutureWarning, stacklevel=4)
            self.solver, self.remedy_options = moved, options
        _choice("backward", self.backward, tuple(svdlib.BACKWARDS))
        self.solver = svdlib.solvers.canonical_name(self.solver)
        _choice("solver", self.solver, ("auto", *svdlib.SOLVERS))
        try:
            _options.check_matrix_function_options(self.method, self.backward,
                                                   {**self.remedy_options, "solver": self.solver})
        except ValueError as exc:
            raise ValueError(f"remedy_options: {exc}") from None

    @property
    def effective_stem_width(self) -> int:
        """Channels of the stem conv output (``stem_width`` or, when 0, ``width``)."""
        return self.stem_width or self.width

    def to_dict(self) -> dict:
        """Plain dict (YAML/JSON serialisable) of every field."""
        return copy.deepcopy(dataclasses.asdict(self))

    def replace(self, **changes) -> "ExperimentConfig":
        """A validated copy with some fields changed (unknown names are errors)."""
        return config_from_dict({**self.to_dict(), **changes})


# ------------------------------------------------------------------------------------------
# type handling
# ------------------------------------------------------------------------------------------
_HINTS: dict | None = None


def _hints() -> dict:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(ExperimentConfig)
    return _HINTS


def field_names() -> list[str]:
    """Names of all config fields, in declaration order."""
    return [f.name for f in dataclasses.fields(ExperimentConfig)]


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else tp.__name__


def _coerce(name: str, value: Any, tp) -> Any:
    """Return ``value`` checked against annotation ``tp`` (int -> float allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"{name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise TypeError(f"{name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict (YAML mapping), got {value!r} ({type(value).__name__})")
        return copy.deepcopy(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be bool (true/false), got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "5e-4" (no dot) as a string: accept float literals.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be str, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for field {name}")  # pragma: no cover


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _unknown_keys(keys, where: str) -> None:
    valid = set(field_names())
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ValueError(
            f"unknown config key(s) {bad} in {where}; valid keys are: {', '.join(field_names())}")


def config_from_dict(d: dict) -> ExperimentConfig:
    """Build a validated config from a flat dict of field values; unknown keys are errors."""
    if not isinstance(d, dict):
        raise TypeError(f"config must be a dict, got {type(d).__name__}")
    _unknown_keys(d.keys(), "the config dict")
    return ExperimentConfig(**copy.deepcopy(d))


# ------------------------------------------------------------------------------------------
# YAML files and profiles
# ------------------------------------------------------------------------------------------
_SPECIAL = ("base", "profiles")


def parse_yaml_file(path: str | os.PathLike, what: str = "config file") -> Any:
    """The content of a YAML file (``yaml.safe_load``); a file that is not UTF-8 or not YAML, or
    uses a ``!!python`` tag, raises a one-line ValueError naming ``what`` and the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text: {e}") from None
    except yaml.constructor.ConstructorError as e:
        raise ValueError(f"could not parse {what} {path}: {_one_line(e)}; it is read with yaml.safe_load, "
                         "so tags such as !!python/... are not allowed") from None
    except yaml.YAMLError as e:
        raise ValueError(f"could not parse {what} {path}: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    """yaml's multi-line message (problem, then the file position) on one line."""
    return " ".join(str(error).split())


def _read_yaml(path: str) -> dict:
    data = parse_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must contain a YAML mapping, got {type(data).__name__}")
    return data


def _check_types(values: dict, where: str) -> None:
    """Type-check each value of one section of a file where it is written, so a value that a
    profile or a child file overrides is checked too; the message names ``where``."""
    hints = _hints()
    for name, value in values.items():
        try:
            _coerce(name, value, hints[name])
        except (TypeError, ValueError) as e:
            raise type(e)(f"{e} ({where})") from None


def _resolve_file(path: str, _seen: tuple = ()) -> tuple[dict, dict]:
    """(top-level fields, {profile: overrides}) of ``path`` with its ``base`` chain merged."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ValueError(f"config 'base' chain loops: {' -> '.join(_seen + (path,))}")
    data = _read_yaml(path)
    top: dict = {}
    profiles: dict = {}
    if "base" in data:
        base = data["base"]
        if not isinstance(base, str):
            raise TypeError(f"'base' in {path} must be a path string, got {base!r}")
        top, profiles = _resolve_file(os.path.join(os.path.dirname(path), base), _seen + (path,))
    own_profiles = data.get("profiles", {}) or {}
    if not isinstance(own_profiles, dict):
        raise TypeError(f"'profiles' in {path} must be a mapping, got {own_profiles!r}")
    for pname, section in own_profiles.items():
        if pname not in PROFILES:
            raise ValueError(f"profile {pname!r} in {path} is not one of {list(PROFILES)}")
        section = section or {}
        if not isinstance(section, dict):
            raise TypeError(f"profiles.{pname} in {path} must be a mapping, got {section!r}")
        _unknown_keys(section.keys(), f"{path} profiles.{pname}")
        if "profile" in section:
            raise ValueError(f"profiles.{pname} in {path} must not set 'profile'")
        _check_types(section, f"profiles.{pname} of {path}")
        profiles = {**profiles, pname: {**profiles.get(pname, {}), **section}}
    fields = {k: v for k, v in data.items() if k not in _SPECIAL}
    _unknown_keys(fields.keys(), path)
    if "profile" in fields:
        raise ValueError(f"{path} must not set 'profile' at top level; it is chosen when loading "
                         f"(load_config(profile=...) or --profile)")
    _check_types(fields, f"top level of {path}")
    top.update(fields)
    return top, profiles


def load_config(path: str | os.PathLike, profile: str = "quick", overrides=()) -> ExperimentConfig:
    """Load a YAML config at a profile and apply ``key=value`` overrides.

    Parameters
    ----------
    path : str or PathLike
        The YAML file (see the module docstring for its layout).
    profile : {"quick", "long", "paper"}
        ``quick`` requires a ``profiles.quick`` section (so a notebook never runs a paper-scale
        protocol by accident); ``long`` applies ``profiles.quick`` then ``profiles.long``;
        ``paper`` applies ``profiles.paper`` when present.
    overrides : iterable of str, or dict
        ``"key=value"`` strings (values parsed with ``yaml.safe_load``; dotted keys reach into
        dict fields) or a dict ``{key: value}``.

    Returns
    -------
    ExperimentConfig
        Validated, with ``profile`` set.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    top, profiles = _resolve_file(path)
    if profile in ("quick", "long") and "quick" not in profiles:
        raise ValueError(f"config {path} has no 'profiles: quick:' section; load it with "
                         f"profile='paper' or add quick overrides")
    scale = {**profiles["quick"], **profiles.get("long", {})} if profile == "long" else profiles.get(profile, {})
    values = {**top, **scale, "profile": profile}
    cfg = config_from_dict(values)
    return apply_overrides(cfg, overrides)


def _parse_override(item: str) -> tuple[str, Any]:
    import yaml

    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"override must look like key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"could not parse the value of override {item!r}: {e}") from None
    return key, value


def apply_overrides(cfg: ExperimentConfig, overrides=()) -> ExperimentConfig:
    """Return a validated copy of ``cfg`` with overrides applied (see :func:`load_config`).

    Overriding a field that ``cfg.sweep`` varies pins it: the field leaves the sweep (so
    ``--set group_size=64`` runs only d = 64 of a group-size sweep).
    """
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = [_parse_override(o) for o in overrides]
    values = cfg.to_dict()
    hints = _hints()
    for key, value in pairs:
        top, _, sub = key.partition(".")
        _unknown_keys([top], f"override {key!r}")
        if top == "profile":
            raise ValueError("'profile' cannot be overridden with --set; choose it with --profile "
                             "(or load_config(profile=...))")
        if sub:
            if hints[top] is not dict:
                raise ValueError(f"dotted override {key!r}: field {top!r} is not a dict field")
            values[top] = {**values[top], sub: value}
        else:
            values[top] = value
        if top != "sweep" and isinstance(values.get("sweep"), dict) and top in values["sweep"]:
            # an explicit value pins a swept field: it leaves the sweep
            values["sweep"] = {k: v for k, v in values["sweep"].items() if k != top}
    return config_from_dict(values)


_MAX_FOLDER_NAME = 255
_PATH_CHARACTERS = ("/", "\\", "\0")


def sweep_folder_part(key: str, value: Any) -> str:
    """``key=value``, one part of a sweep run's folder name; ValueError when the value could
    make that name reach another folder (a path separator or a control character in it)."""
    text = f"{key}={value}"
    bad = [c for c in _PATH_CHARACTERS if c in text] + [c for c in text if ord(c) < 32 and c != "\0"]
    if bad:
        raise ValueError(
            f"sweep value {value!r} of field {key!r} is not usable as a folder name: "
            f"{text!r} contains {sorted(set(bad))!r}; each sweep run is written to the folder "
            "<out>/key=value,..., which must stay inside the output folder")
    return text


def expand_sweep(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """One ``(suffix, config)`` per combination of ``cfg.sweep``.

    The suffix names the combination (``"group_size=8,seed=1"``; ``""`` without a sweep) and
    is meant as a sub-directory of the run's output directory: it is one folder name, never
    a path (see :func:`sweep_folder_part`). Each returned config is one
    validated run (its swept fields pinned, its ``sweep`` empty).
    """
    if not cfg.sweep:
        return [("", cfg)]
    keys = list(cfg.sweep)
    out = []
    for combo in itertools.product(*(cfg.sweep[k] for k in keys)):
        changes = dict(zip(keys, combo))
        suffix = ",".join(sweep_folder_part(k, v) for k, v in changes.items())
        out.append((suffix, apply_overrides(cfg, changes)))
    return out


def config_help() -> str:
    """Every field with its type, default and documentation (used by ``--help``)."""
    lines = []
    hints = _hints()
    for f in dataclasses.fields(ExperimentConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)

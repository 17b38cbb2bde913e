"""Style transfer by whitening and colouring (WCT) on real photographs, at CPU scale.

Robust Differentiable SVD (TPAMI 2021), sec. 5.3: a WCT layer (eq. 30-33) inside an image
translation network, trained end to end, with the SVD gradient made stable by a remedy
(SVD-WCT: Taylor; PI-WCT: power iteration; Clip-WCT: gradient clipping), and the outputs
scored by a sharpness measure (Table IX). This module holds what notebook 13 needs:

* :func:`load_photographs`, :func:`random_crops`, :func:`content_style_pairs`: the two
  photographs that ship with scikit-learn (``china.jpg``, ``flower.jpg``) and crops of them;
* :func:`sharpness`: the Table IX score, mean norm of the intensity gradient;
* :func:`transfer_colors`: WCT on RGB pixels (:func:`svdlib.nn.color_transfer`);
* :class:`WCTAutoencoder`, :func:`train_autoencoder`: a small convolutional encoder-decoder
  trained for reconstruction, whose feature maps are restyled by :func:`svdlib.nn.wct`
  (Li et al. 2017, "Universal Style Transfer via Feature Transforms");
* :func:`finetune_through_wct`: end-to-end training *through* the WCT layer (gradient flows
  into the encoder through both the inverse square root and the square root), the setting in
  which the remedies differ; :func:`wct_directional_error` measures each remedy's gradient
  against a central finite difference of the exact forward;
* :data:`PROFILES`, :func:`style_settings`: the quick (CPU) and paper (WCT geometry of the
  paper) settings.

The paper trains GD-WCT (Cho et al. 2019), a GAN with cycle and style losses, on the Artworks
dataset for ~21 GPU hours. None of that is here: the photographs replace the artworks, a
frozen copy of our own encoder replaces VGG as loss network, and there is no adversary. Our
numbers therefore test the *mechanism* (what each remedy does to the gradient through a WCT
layer) and are never a reproduction of Table IX.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import svdlib
from svdlib.remedies import DEFAULT_BACKWARD

__all__ = [
    "PHOTOGRAPHS",
    "LUMA_WEIGHTS",
    "PROFILES",
    "StyleSettings",
    "style_settings",
    "parse_methods",
    "load_photographs",
    "random_crops",
    "content_style_pairs",
    "luminance",
    "sharpness",
    "transfer_colors",
    "feature_moments",
    "moment_loss",
    "WCTAutoencoder",
    "train_autoencoder",
    "finetune_through_wct",
    "wct_directional_error",
    "evaluate_stylization",
    "compare_methods",
    "compare_over_seeds",
]

#: The photographs of :func:`sklearn.datasets.load_sample_images`, in its order.
PHOTOGRAPHS = ("china", "flower")

#: ITU-R BT.601 luma weights (R, G, B): the "intensity" of an RGB image.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_SKLEARN_HINT = "pip install scikit-learn (the photographs ship with it; nothing is downloaded)"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class StyleSettings:
    """Scale of the style-transfer experiment (one per profile; see :data:`PROFILES`).

    Attributes
    ----------
    profile : str
        ``"quick"`` or ``"paper"``; labels every result.
    image_scale : float
        Factor applied to the 427 x 640 photographs before cropping.
    patch_size : int
        Side of the random crops the autoencoder is trained on.
    width : int
        Channels of the encoder's feature map, i.e. the dimension C that WCT whitens.
    groups : int
        WCT channel groups (GD-WCT: 8 groups); each covariance is (width/groups)^2.
    ae_steps, ae_batch, ae_lr : int, int, float
        Adam steps, batch size and learning rate of the reconstruction training.
    finetune_steps, finetune_batch, finetune_lr : int, int, float
        The same for the end-to-end fine-tuning through the WCT layer (per method).
    style_weight : float
        Weight of the feature-moment (style) loss against the content loss.
    n_pairs, pair_size : int
        Held-out content/style pairs for the sharpness score, and their side.
    seeds : int
        Fine-tuning seeds per treatment (the replicates of the comparison: batches and
        gradient-check directions differ, the trained starting network is shared).
    eps : float
        ``eps * I`` added to the content covariance in the whitening (``svdlib.nn.whiten``).
    """

    profile: str
    image_scale: float
    patch_size: int
    width: int
    groups: int
    ae_steps: int
    ae_batch: int
    ae_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    style_weight: float
    n_pairs: int
    pair_size: int
    eps: float
    seeds: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


#: ``quick``: a CPU run of a minute or two (32 channels in one group: a 32 x 32 covariance,
#: the paper's per-group matrix size), 3 fine-tuning seeds. ``long``: the same with 10 seeds.
#: ``paper``: the paper's WCT geometry (256 channels in 8 groups of 32, Fig. 8 / sec. 5.3.3) on
#: full-resolution photographs, trained longer; still neither the paper's data (Artworks) nor
#: its model (GD-WCT GAN).
PROFILES: dict[str, StyleSettings] = {
    "quick": StyleSettings(
        profile="quick", image_scale=0.5, patch_size=32, width=32, groups=1,
        ae_steps=200, ae_batch=16, ae_lr=3e-3,
        finetune_steps=40, finetune_batch=4, finetune_lr=3e-4, style_weight=10.0,
        n_pairs=4, pair_size=96, eps=1e-5, seeds=3,
    ),
    "long": StyleSettings(
        profile="long", image_scale=0.5, patch_size=32, width=32, groups=1,
        ae_steps=200, ae_batch=16, ae_lr=3e-3,
        finetune_steps=40, finetune_batch=4, finetune_lr=3e-4, style_weight=10.0,
        n_pairs=4, pair_size=96, eps=1e-5, seeds=10,
    ),
    "paper": StyleSettings(
        profile="paper", image_scale=1.0, patch_size=64, width=256, groups=8,
        ae_steps=5000, ae_batch=16, ae_lr=1e-3,
        finetune_steps=1000, finetune_batch=8, finetune_lr=1e-4, style_weight=10.0,
        n_pairs=16, pair_size=256, eps=1e-5, seeds=3,
    ),
}


def style_settings(profile: str = "quick", **overrides) -> StyleSettings:
    """The settings of ``profile`` with some fields replaced.

    An override whose value is ``None`` or ``0`` keeps the profile's value, so a notebook can
    declare ``ae_steps: int = 0  # 0: the profile's value`` and pass it straight through.

    Examples
    --------
    >>> style_settings("quick", ae_steps=20, n_pairs=0).ae_steps, style_settings("quick").n_pairs
    (20, 4)
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    base = PROFILES[profile]
    known = set(base.as_dict()) - {"profile"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; expected some of {sorted(known)}")
    changes = {k: v for k, v in overrides.items() if v is not None and v != 0}
    settings = replace(base, **changes)
    for name in ("patch_size", "width", "groups", "ae_steps", "ae_batch", "finetune_batch",
                 "n_pairs", "pair_size", "seeds"):
        _positive_int(getattr(settings, name), name)
    if settings.width % settings.groups:
        raise ValueError(f"groups must divide width ({settings.width}), got groups={settings.groups}")
    for name in ("patch_size", "pair_size"):
        if getattr(settings, name) % 2:
            raise ValueError(f"{name} must be even (the encoder halves it), got {getattr(settings, name)}")
    return settings


def parse_methods(spec: str) -> list[tuple[str, str, str]]:
    """Parse a comma-separated list of treatments into ``(label, method, backward)``.

    An entry is a backward remedy of :data:`svdlib.BACKWARDS` (the matrix functions use
    ``method="eigh"``) or ``"newton_schulz"`` (iSQRT-COV iteration, autograd backward).

    Examples
    --------
    >>> parse_methods("taylor, newton_schulz")
    [('taylor', 'eigh', 'taylor'), ('newton_schulz', 'newton_schulz', 'taylor')]
    """
    if not isinstance(spec, str):
        raise TypeError(f"methods must be a comma-separated string, got {type(spec).__name__}")
    out = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name == "newton_schulz":
            out.append((name, "newton_schulz", DEFAULT_BACKWARD))  # backward unused by Newton-Schulz
        elif name in svdlib.BACKWARDS:
            out.append((name, "eigh", name))
        else:
            raise ValueError(
                f"unknown method {name!r} in methods={spec!r}; expected 'newton_schulz' or one "
                f"of {sorted(svdlib.BACKWARDS)}"
            )
    if not out:
        raise ValueError(f"methods must name at least one treatment, got {spec!r}")
    if len({label for label, _, _ in out}) != len(out):
        raise ValueError(f"methods lists a treatment twice: {spec!r}")
    return out


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _image_batch(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a float batch of RGB images (B, 3, H, W), got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    return x


# ----------------------------------------------------------------------------- images
def load_photographs(scale: float = 1.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The photographs that ship with scikit-learn, as RGB tensors (3, H, W) in [0, 1].

    Parameters
    ----------
    scale : float, default 1.0
        Resize factor in (0, 1] (bilinear with antialiasing); 1 keeps 427 x 640.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    dict
        ``{"china": tensor, "flower": tensor}`` (:data:`PHOTOGRAPHS`).
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale <= 1:
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"load_photographs needs scikit-learn: {_SKLEARN_HINT}") from exc
    images = load_sample_images().images
    out = {}
    for name, img in zip(PHOTOGRAPHS, images):
        t = torch.tensor(img).permute(2, 0, 1).to(torch.float64).div_(255.0)
        if scale != 1:
            t = F.interpolate(t[None], scale_factor=float(scale), mode="bilinear",
                              antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)
        out[name] = t.to(dtype).contiguous()
    return out


def random_crops(images: Sequence[torch.Tensor], n: int, size: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` square crops of side ``size`` from images chosen uniformly among ``images``.

    Returns a tensor (n, 3, size, size). Positions are drawn with ``generator``.
    """
    n, size = _positive_int(n, "n"), _positive_int(size, "size")
    images = list(images)
    if not images:
        raise ValueError("images must hold at least one image")
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[-2] < size or img.shape[-1] < size:
            raise ValueError(
                f"images[{i}] must be (3, H, W) with H, W >= size={size}, got {tuple(img.shape)}"
            )
    which = torch.randint(len(images), (n,), generator=generator)
    crops = []
    for k in which.tolist():
        img = images[k]
        top = int(torch.randint(img.shape[-2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(img.shape[-1] - size + 1, (1,), generator=generator))
        crops.append(img[:, top:top + size, left:left + size])
    return torch.stack(crops)


def content_style_pairs(photos: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], n_pairs: int,
                        size: int, seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and style crops taken from *different* photographs (content i from photo i mod P).

    ``photos`` is a mapping (e.g. :func:`load_photographs`) or a sequence of (3, H, W) images,
    at least two. ``seed`` is an int or a :class:`torch.Generator` (advanced in place).
    Returns ``(content, style)``, each (n_pairs, 3, size, size).
    """
    n_pairs = _positive_int(n_pairs, "n_pairs")
    images = list(photos.values()) if isinstance(photos, Mapping) else list(photos)
    if len(images) < 2:
        raise ValueError(f"photos must hold at least two photographs, got {len(images)}")
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    content, style = [], []
    for i in range(n_pairs):
        a, b = images[i % len(images)], images[(i + 1) % len(images)]
        content.append(random_crops([a], 1, size, g)[0])
        style.append(random_crops([b], 1, size, g)[0])
    return torch.stack(content), torch.stack(style)


# ----------------------------------------------------------------------------- sharpness
def luminance(img: torch.Tensor) -> torch.Tensor:
    """Intensity of images (..., C, H, W): the BT.601 luma for C = 3, the channel for C = 1."""
    if not isinstance(img, torch.Tensor) or img.dim() < 3 or img.shape[-3] not in (1, 3):
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"img must be images of shape (..., C, H, W) with C in (1, 3), got {shape}")
    if img.shape[-3] == 1:
        return img[..., 0, :, :]
    w = torch.tensor(LUMA_WEIGHTS, dtype=img.dtype, device=img.device)
    return torch.einsum("...chw,c->...hw", img, w)


def sharpness(img: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    r"""Sharpness score of Robust Differentiable SVD, Table IX (sec. 5.3.3, after Sun et al. 2008).

    "The average norm of the intensity gradients along the vertical and horizontal image
    dimensions" (a larger value is a sharper image). With the intensity I = scale * luma,
    forward differences :math:`g_x = I_{y, x+1} - I_{y, x}` and :math:`g_y = I_{y+1, x} - I_{y, x}`,

    .. math::

        s = \frac{1}{(H-1)(W-1)} \sum_{y < H-1,\; x < W-1} \sqrt{g_x^2 + g_y^2}.

    The paper does not print the formula; these choices (BT.601 luma, forward differences,
    the Euclidean norm of (g_x, g_y), 8-bit scale) are ours, stated so the score can be
    recomputed. The score grows with resolution-dependent detail, so it compares methods on
    the same images, not numbers across datasets.

    Parameters
    ----------
    img : torch.Tensor
        Images (..., C, H, W) with C in {1, 3}, values in [0, 1], H, W >= 2.
    scale : float, default 255
        Intensity scale (255: 8-bit grey levels, as image libraries report it).

    Returns
    -------
    torch.Tensor
        The score per image, shape (...).
    """
    inten = luminance(img)
    if inten.shape[-1] < 2 or inten.shape[-2] < 2:
        raise ValueError(f"img must be at least 2 x 2 pixels, got shape {tuple(img.shape)}")
    inten = inten * float(scale)
    gx = inten[..., :-1, 1:] - inten[..., :-1, :-1]
    gy = inten[..., 1:, :-1] - inten[..., :-1, :-1]
    return torch.sqrt(gx * gx + gy * gy).mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- colour transfer
def transfer_colors(content: torch.Tensor, style: torch.Tensor, method: str = "eigh",
                    backward: str = DEFAULT_BACKWARD, eps: float = 1e-5, alpha: float = 1.0,
                    **options) -> torch.Tensor:
    """Recolour ``content`` with the RGB mean and covariance of ``style`` (WCT on pixels).

    A thin wrapper of :func:`svdlib.nn.color_transfer` (Robust Differentiable SVD, Fig. 2 and
    sec. 5.3.1) that also accepts single images (3, H, W). Outputs are clamped to [0, 1].
    """
    single = isinstance(content, torch.Tensor) and content.dim() == 3
    c = content[None] if single else content
    s = style[None] if isinstance(style, torch.Tensor) and style.dim() == 3 else style
    out = svdlib.nn.color_transfer(c, s, alpha=alpha, method=method, backward=backward, eps=eps,
                                   **options)
    return out[0] if single else out


# ----------------------------------------------------------------------------- features
def feature_moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel means (B, C) and 1/HW covariances (B, C, C) of feature maps (B, C, H, W)."""
    X = f.flatten(2)
    return X.mean(dim=-1), svdlib.covariance(X)


def moment_loss(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Style loss: squared distance of the channel means plus that of the covariances.

    ``mean_b (||mu_b - mu_b^t||^2 + ||Sigma_b - Sigma_b^t||_F^2)``, the second-order statistics
    that WCT transfers (its target ``target`` may have batch size 1).
    """
    mu, cov = feature_moments(f)
    mu_t, cov_t = feature_moments(target)
    return ((mu - mu_t).pow(2).sum(-1) + (cov - cov_t).pow(2).sum((-2, -1))).mean()


class WCTAutoencoder(nn.Module):
    """Small convolutional encoder-decoder whose bottleneck is restyled by WCT.

    Encoder: conv3x3(3, w/2) - ReLU - conv3x3(w/2, w, stride 2) - ReLU - conv3x3(w, w) - ReLU,
    a (B, w, H/2, W/2) map of non-negative features (like VGG's relu_k_1 features in Li et
    al. 2017; channels that are zero on an image make its covariance rank-deficient, the
    regime where the SVD gradient needs a remedy). Decoder: conv3x3(w, w) - ReLU - nearest
    upsampling x2 - conv3x3(w, w/2) - ReLU - conv3x3(w/2, 3) - sigmoid, back to [0, 1].

    Parameters
    ----------
    width : int, default 32
        Channels of the feature map (the dimension whitened by WCT); even.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        width = _positive_int(width, "width")
        if width % 2:
            raise ValueError(f"width must be even, got {width}")
        self.width = width
        h = width // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(3, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, 3, 3, padding=1), nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), H and W even -> features (B, width, H/2, W/2)."""
        _image_batch(x, "x")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"x must have even height and width, got shape {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Features (B, width, h, w) -> images (B, 3, 2h, 2w) in (0, 1)."""
        return self.decoder(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def transfer_features(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0,
                          method: str = "eigh", backward: str = DEFAULT_BACKWARD, eps: float = 1e-5,
                          groups: int = 1, **options) -> torch.Tensor:
        """WCT of the content's features with the style's: ``svdlib.nn.wct(E(c), E(s))``."""
        return svdlib.nn.wct(self.encode(content), self.encode(style), alpha=alpha, method=method,
                             backward=backward, eps=eps, groups=groups, **options)

    def stylize(self, content: torch.Tensor, style: torch.Tensor, **wct_options) -> torch.Tensor:
        """Decode the restyled features: ``D(wct(E(c), E(s)))``; options as in :meth:`transfer_features`."""
        return self.decode(self.transfer_features(content, style, **wct_options))


def train_autoencoder(model: WCTAutoencoder, images: Sequence[torch.Tensor], steps: int,
                      batch: int = 16, patch_size: int = 32, lr: float = 3e-3,
                      seed: int = 0) -> list[float]:
    """Train ``model`` in place to reconstruct random crops (mean squared error, Adam).

    The learning rate decays by a cosine schedule to 10% of ``lr``. Returns the loss per step.
    """
    steps = _positive_int(steps, "steps")
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / steps)))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in range(steps):
        x = random_crops(images, batch, patch_size, g).to(device=device, dtype=dtype)
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _finite_grads(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def finetune_through_wct(model: WCTAutoencoder, images: Sequence[torch.Tensor], steps: int,
                         method: str = "eigh", backward: str = DEFAULT_BACKWARD, *, batch: int = 4,
                         size: int = 32, lr: float = 1e-3, style_weight: float = 10.0,
                         eps: float = 1e-5, groups: int = 1, seed: int = 0,
                         **options) -> tuple[WCTAutoencoder, dict]:
    r"""Fine-tune a copy of ``model`` end to end *through* the WCT layer.

    Each step draws content crops c and style crops s from different images (as
    :func:`content_style_pairs`; drawn from ``seed``, so every method sees the same batches),
    computes ``out = D(wct(E(c), E(s)))`` with the given method and remedy, and descends

    .. math::

        L = \lVert \Phi(out) - \mathrm{wct}(\Phi(c), \Phi(s)) \rVert^2_{mean}
            + w\, \mathrm{moment\_loss}(\Phi(out), \Phi(s))

    where :math:`\Phi` is a frozen copy of the starting encoder (the loss network, as VGG is in
    Li et al. 2017; its target is computed without gradient by the exact eigh forward). The
    gradient reaches E through both the inverse square root of the content covariance and
    the square root of the style covariance: the path that sec. 5.3 stabilises with remedies.
    A step whose loss or gradient is not finite is skipped and counted.

    Returns
    -------
    (WCTAutoencoder, dict)
        The fine-tuned copy, and a record: ``loss`` per step (the batch loss, NaN when it is
        not finite), ``grad_norm`` per step (NaN for a skipped step), ``skipped`` (count),
        ``first_loss``, ``final_loss`` (mean of the last quarter of finite losses; NaN if
        none), ``seconds``.
    """
    steps = _positive_int(steps, "steps")
    net = copy.deepcopy(model).train()
    phi = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    params = list(net.parameters())
    dtype, device = params[0].dtype, params[0].device
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    losses, norms, skipped = [], [], 0
    t0 = time.perf_counter()
    for _ in range(steps):
        c, s = content_style_pairs(images, batch, size, g)
        c, s = c.to(device=device, dtype=dtype), s.to(device=device, dtype=dtype)
        with torch.no_grad():
            fs = phi(s)
            # no gradient here, so the remedy is irrelevant: this is the eigh forward
            target = svdlib.nn.wct(phi(c), fs, method="eigh", eps=eps, groups=groups)
        out = net.stylize(c, s, method=method, backward=backward, eps=eps, groups=groups, **options)
        fo = phi(out)
        loss = F.mse_loss(fo, target) + style_weight * moment_loss(fo, fs)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            losses.append(float("nan"))
            norms.append(float("nan"))
            continue
        loss.backward()
        norm = float(torch.linalg.vector_norm(torch.stack(
            [p.grad.detach().norm() for p in params if p.grad is not None])))
        if not _finite_grads(params) or not math.isfinite(norm):
            skipped += 1
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            norms.append(float("nan"))
            continue
        opt.step()
        losses.append(float(loss.detach()))
        norms.append(norm)
    net.eval()
    finite = [v for v in losses if math.isfinite(v)]
    tail = finite[-max(1, len(finite) // 4):] if finite else []
    record = {
        "method": method,
        "backward": backward if method == "eigh" else None,
        "loss": losses,
        "grad_norm": norms,
        "skipped": skipped,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "seconds": time.perf_counter() - t0,
    }
    return net, record


def wct_directional_error(content_features: torch.Tensor, style_features: torch.Tensor,
                          methods: Sequence[tuple[str, str, str]], eps: float = 1e-5,
                          groups: int = 1, step: float = 1e-6, seed: int = 0,
                          **options) -> dict[str, float]:
    r"""Relative error of each method's WCT gradient along a random direction.

    In float64, with a fixed random cotangent G and loss :math:`L(X_c, X_s) = \langle G,
    \mathrm{wct}(X_c, X_s)\rangle`, the directional derivative along a random direction V of
    both inputs is computed (i) by each method's backward, :math:`\langle \nabla L, V\rangle`,
    and (ii) by a central finite difference of the *exact* eigh forward, :math:`(L(X + hV) -
    L(X - hV)) / 2h`, the independent reference. Returned per label: ``|(i) - (ii)| / |(ii)|``.
    Newton-Schulz is scored against the same reference, so its error includes the error of its
    forward. Where a style covariance is singular (dead ReLU channels) its square root is not
    differentiable and the finite difference measures a one-sided mixture: read such errors
    as disagreement, not as a verdict.
    """
    Xc = content_features.detach().to(torch.float64)
    Xs = style_features.detach().to(torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    G = torch.randn(Xc.shape, generator=g, dtype=torch.float64).to(Xc.device)
    Vc = torch.randn(Xc.shape, generator=g, dtype=torch.float64).to(Xc.device)
    Vs = torch.randn(Xs.shape, generator=g, dtype=torch.float64).to(Xs.device)
    Vc, Vs = Vc * Xc.norm() / Vc.norm(), Vs * Xs.norm() / Vs.norm()

    def value(c, s):
        with torch.no_grad():
            return float((G * svdlib.nn.wct(c, s, backward="exact", eps=eps, groups=groups)).sum())

    reference = (value(Xc + step * Vc, Xs + step * Vs) - value(Xc - step * Vc, Xs - step * Vs)) / (2 * step)
    errors = {}
    for label, method, backward in methods:
        c = Xc.clone().requires_grad_(True)
        s = Xs.clone().requires_grad_(True)
        out = svdlib.nn.wct(c, s, method=method, backward=backward, eps=eps, groups=groups, **options)
        gc, gs = torch.autograd.grad((G * out).sum(), (c, s))
        directional = float((gc * Vc).sum() + (gs * Vs).sum())
        errors[label] = abs(directional - reference) / max(abs(reference), 1e-300)
    return errors


def evaluate_stylization(net: WCTAutoencoder, loss_net: nn.Module, content: torch.Tensor,
                         style: torch.Tensor, method: str = "eigh", backward: str = DEFAULT_BACKWARD,
                         eps: float = 1e-5, groups: int = 1,
                         style_weight: float = 10.0) -> tuple[torch.Tensor, dict]:
    """Stylise held-out pairs with ``net`` and score the result (no gradient).

    Returns the stylised images and ``{"content_loss", "style_loss", "loss", "sharpness"}``:
    the two terms of the objective of :func:`finetune_through_wct` measured with the loss
    network ``loss_net`` (the frozen starting encoder), their weighted sum, and the mean
    :func:`sharpness` of the outputs.
    """
    _image_batch(content, "content")
    _image_batch(style, "style")
    with torch.no_grad():
        fs = loss_net(style)
        target = svdlib.nn.wct(loss_net(content), fs, eps=eps, groups=groups)
        out = net.stylize(content, style, method=method, backward=backward, eps=eps, groups=groups)
        fo = loss_net(out)
        c_loss, s_loss = float(F.mse_loss(fo, target)), float(moment_loss(fo, fs))
    return out, {
        "content_loss": c_loss,
        "style_loss": s_loss,
        "loss": c_loss + style_weight * s_loss,
        "sharpness": float(sharpness(out).mean()),
    }


def compare_methods(model: WCTAutoencoder, images: Sequence[torch.Tensor],
                    content: torch.Tensor, style: torch.Tensor,
                    methods: Sequence[tuple[str, str, str]], settings: StyleSettings,
                    seed: int = 0, n_directions: int = 3, n_objective_pairs: int = 16) -> tuple[dict, dict]:
    """Run the sec. 5.3 comparison for each ``(label, method, backward)`` of ``methods``.

    For every treatment, starting from the same trained ``model``: the worst relative error
    of its WCT gradient over ``n_directions`` random directions (:func:`wct_directional_error`,
    on the features of the held-out pairs), the end-to-end fine-tuning through the WCT layer
    (:func:`finetune_through_wct`, same batches for all), and the held-out objective and
    sharpness after fine-tuning (:func:`evaluate_stylization`): the objective on
    ``n_objective_pairs`` held-out pairs of the training crop size (its covariances are
    estimated from as many positions as in training), the sharpness on ``content``/``style``.

    Returns
    -------
    (dict, dict)
        ``results[label]``: a flat dict of numbers (JSON-ready) plus the ``loss`` and
        ``grad_norm`` curves; ``outputs[label]``: the stylised held-out images.
    """
    S = settings
    phi = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    device = next(model.parameters()).device
    content, style = content.to(device), style.to(device)
    with torch.no_grad():
        fc, fs = model.encode(content), model.encode(style)
    errors = {label: 0.0 for label, _, _ in methods}
    for k in range(_positive_int(n_directions, "n_directions")):
        for label, err in wct_directional_error(fc, fs, methods, eps=S.eps, groups=S.groups,
                                                seed=seed + k).items():
            errors[label] = max(errors[label], err) if math.isfinite(err) else float("nan")
    obj_c, obj_s = content_style_pairs(images, n_objective_pairs, S.patch_size, seed=seed + 10_007)
    obj_c, obj_s = obj_c.to(device), obj_s.to(device)
    _, before = evaluate_stylization(model, phi, obj_c, obj_s, eps=S.eps, groups=S.groups,
                                     style_weight=S.style_weight)
    results, outputs = {}, {}
    for label, method, backward in methods:
        net, rec = finetune_through_wct(
            model, images, S.finetune_steps, method, backward, batch=S.finetune_batch,
            size=S.patch_size, lr=S.finetune_lr, style_weight=S.style_weight, eps=S.eps,
            groups=S.groups, seed=seed)
        _, after = evaluate_stylization(net, phi, obj_c, obj_s, method, backward, eps=S.eps,
                                        groups=S.groups, style_weight=S.style_weight)
        out, scored = evaluate_stylization(net, phi, content, style, method, backward, eps=S.eps,
                                           groups=S.groups, style_weight=S.style_weight)
        finite_norms = [v for v in rec["grad_norm"] if math.isfinite(v)]
        results[label] = {
            "method": method,
            "backward": rec["backward"],
            "directional_error": errors[label],
            "steps": S.finetune_steps,
            "skipped_steps": rec["skipped"],
            "max_grad_norm": max(finite_norms) if finite_norms else float("nan"),
            "objective_before": before["loss"],
            "objective_after": after["loss"],
            "content_loss_after": after["content_loss"],
            "style_loss_after": after["style_loss"],
            "sharpness": scored["sharpness"],
            "seconds_per_step": rec["seconds"] / S.finetune_steps,
            "loss": rec["loss"],
            "grad_norm": rec["grad_norm"],
        }
        outputs[label] = out.cpu()
    return results, outputs


def compare_over_seeds(model: WCTAutoencoder, images: Sequence[torch.Tensor], content: torch.Tensor,
                       style: torch.Tensor, methods: Sequence[tuple[str, str, str]], settings: StyleSettings,
                       seeds: Sequence[int], n_directions: int = 3) -> tuple[dict, dict]:
    """:func:`compare_methods` once per fine-tuning seed: the replicates of the sec. 5.3 comparison.

    Every seed starts from the same trained ``model`` and scores the same held-out pairs; the
    fine-tuning batches and the directions of the gradient check change with the seed.

    Returns
    -------
    (dict, dict)
        ``per_seed[label]``: one :func:`compare_methods` result per seed (in ``seeds`` order), each
        with ``"seed"`` and ``"sharpness_per_pair"`` added; ``outputs[label]``: the stylised
        held-out images of the first seed.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    per_seed = {label: [] for label, _, _ in methods}
    first = None
    for seed in seeds:
        results, outputs = compare_methods(model, images, content, style, methods, settings, seed=seed,
                                           n_directions=n_directions)
        first = first or outputs
        for label in per_seed:
            per_seed[label].append({**results[label], "seed": seed,
                                    "sharpness_per_pair": sharpness(outputs[label]).tolist()})
    return per_seed, first

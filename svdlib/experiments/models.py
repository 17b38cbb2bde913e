"""ResNets with an SVD meta layer, scalable from ResNet-50 down to a CPU-second toy.

- kind ``"zca"``: the BN after the stem conv is :class:`svdlib.nn.DecorrelatedBatchNorm2d`
  (ZCA whitening of channel groups). With the ``"cifar"`` stem the conv is 3x3 with stride 1
  and no max-pool follows (Song et al., ECCV 2022, appendix B.1 and Fig. 6; Wang et al.,
  TPAMI 2021, Table II). The stem conv is the **Pre-SVD layer**.
- kind ``"gcp"``: global average pooling is replaced by :class:`svdlib.nn.CovariancePooling`
  (1x1 conv + BN + ReLU reduction, covariance of the H*W positions, matrix square root, upper
  triangle; ECCV 2022 appendix B.2, Fig. 7). The reduction conv is the **Pre-SVD layer** ("the
  convolution transform of the previous layer").
- kind ``"bn"``: the plain BatchNorm baseline (no meta layer; the stem conv still answers to
  ``pre_svd`` so the weight treatments can be compared on it).

Every model exposes ``model.pre_svd`` (the Pre-SVD module) and ``model.meta_layer`` (the svdlib
layer, or None) so treatments and metrics find them by attribute. The meta layer runs outside
autocast, in float32 or wider, whatever the network's precision.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ResNet", "build_model", "ARCH_BLOCKS", "MetaLayerGuard"]

#: (block type, blocks per stage) of each architecture.
ARCH_BLOCKS = {
    "resnet_tiny": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        # Up to 32 groups (Wu & He) but at least 8 channels per group: tiny widths with one or
        # two channels per group make the normalisation of small feature maps ill-conditioned.
        groups = 32
        while groups > 1 and (channels % groups or channels // groups < 8):
            groups //= 2
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          _norm(norm, planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                          _norm(norm, out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class MetaLayerGuard(nn.Module):
    """Runs the svdlib meta layer outside autocast, in ``dtype``, and watches its input.

    Parameters
    ----------
    layer : nn.Module
        The svdlib layer.
    dtype : torch.dtype, optional
        Compute dtype of the whole layer, covariance included (the ICCV 2021 GCP code computes
        the covariance in float64 so that small eigenvalues survive): the input is cast to it
        and the output cast back to the network's dtype (float32 under autocast). None: the
        input's dtype, at least float32.

    If the input holds NaN/Inf, or values so large that its covariance would overflow
    (``|x| > sqrt(finfo.max / N) / 10``), the step has diverged: the guard sets
    ``self.tripped = True`` and feeds zeros instead, so every process finishes the forward
    (collectives inside a synchronised layer stay matched) and the training loop stops the
    run cleanly instead of the eigensolver raising on non-finite input.
    """

    def __init__(self, layer: nn.Module, dtype: torch.dtype | None = None):
        super().__init__()
        self.layer = layer
        self.dtype = dtype
        self.tripped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        work = x.to(self.dtype or out_dtype)
        with torch.no_grad():
            n = max(1, x.numel() // max(1, x.shape[1]))
            bound = math.sqrt(torch.finfo(work.dtype).max / n) / 10.0
            amax = work.detach().abs().amax()
            bad = bool(~torch.isfinite(amax) | (amax > bound))
        if bad:
            self.tripped = True
            work = torch.zeros_like(work)
        device_type = work.device.type if work.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return self.layer(work).to(out_dtype)


class ResNet(nn.Module):
    """ResNet (BasicBlock or Bottleneck, four stages) with an optional SVD meta layer.

    Parameters
    ----------
    num_classes : int
    block : {"basic", "bottleneck"}
    blocks : list of 4 int
        Blocks per stage.
    width : int
        Channels of the first stage (64 in ResNet-18/50); stage i has ``width * 2**i``.
    stem_width : int
        Output channels of the stem conv (whitened by the ZCA layer for kind "zca").
    in_channels : int
    stem : {"cifar", "imagenet"}
        3x3 stride-1 conv without max-pool, or 7x7 stride-2 conv + 3x3 stride-2 max-pool.
    last_stride : int
        Stride of the fourth stage.
    block_norm : {"bn", "gn", "none"}
        Normalisation inside the residual blocks.
    kind : {"zca", "gcp", "bn"}
    meta_factory : callable, optional
        ``meta_factory(channels) -> (layer, dtype)``: builds the DecorrelatedBatchNorm2d (zca)
        or the CovariancePooling (gcp, must expose ``output_dim``) for the given number of
        input channels, and the dtype its input is cast to (None: the network's).
    """

    def __init__(self, num_classes: int, block: str = "basic", blocks=(1, 1, 1, 1), width: int = 64,
                 stem_width: int = 64, in_channels: int = 3, stem: str = "cifar",
                 last_stride: int = 2, block_norm: str = "bn", kind: str = "bn",
                 meta_factory=None):
        super().__init__()
        if kind in ("zca", "gcp") and meta_factory is None:
            raise ValueError(f"kind={kind!r} needs a meta_factory")
        Block = BasicBlock if block == "basic" else Bottleneck
        self.kind = kind
        if stem == "cifar":
            self.stem_conv = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
            self.stem_pool = nn.Identity()
        else:
            self.stem_conv = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
            self.stem_pool = nn.MaxPool2d(3, 2, 1)
        if kind == "zca":
            layer, dtype = meta_factory(stem_width)
            self.stem_norm = MetaLayerGuard(layer, dtype)
        else:
            self.stem_norm = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = stem_width
        stages = []
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            stride = 1 if i == 0 else (last_stride if i == 3 else 2)
            layers = []
            for j in range(n):
                layers.append(Block(in_planes, planes, stride if j == 0 else 1, block_norm))
                in_planes = planes * Block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_planes
        if kind == "gcp":
            layer, dtype = meta_factory(in_planes)
            self.pool = MetaLayerGuard(layer, dtype)
            head_dim = self.pool.layer.output_dim
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            head_dim = in_planes
        self.fc = nn.Linear(head_dim, num_classes)

    # -- attributes the harness looks for ---------------------------------------------------
    @property
    def meta_layer(self) -> nn.Module | None:
        """The svdlib layer (DecorrelatedBatchNorm2d / CovariancePooling), or None for "bn"."""
        if self.kind == "zca":
            return self.stem_norm.layer
        if self.kind == "gcp":
            return self.pool.layer
        return None

    @property
    def meta_guard(self) -> MetaLayerGuard | None:
        """The guard around the meta layer (its ``tripped`` flag marks a diverged step)."""
        if self.kind == "zca":
            return self.stem_norm
        if self.kind == "gcp":
            return self.pool
        return None

    @property
    def pre_svd(self) -> nn.Module:
        """The Pre-SVD layer: the conv whose output feeds the meta layer's covariance."""
        if self.kind == "gcp":
            reduce = self.pool.layer.reduce
            if reduce is None:
                raise AttributeError("CovariancePooling without reduction has no Pre-SVD conv of its own; "
                                     "set gcp_reduced_dim")
            return reduce[0]
        return self.stem_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.relu(self.stem_norm(self.stem_conv(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x))


def _meta_factory(cfg):
    """``channels -> (svdlib layer, input dtype)`` from the config's meta-layer fields.

    zca: the whole layer (covariance, eigendecomposition, whitening) runs in ``meta_dtype``.
    gcp: CovariancePooling starts with its float32 1x1-conv reduction, so its input stays in the
    network's dtype and ``meta_dtype`` reaches the matrix function as ``compute_dtype`` (the
    covariance itself is then formed in float32).
    """
    import svdlib.nn

    dtype = torch.float64 if cfg.meta_dtype == "float64" else torch.float32
    options = {**cfg.remedy_options, **cfg.layer_options}
    if cfg.solver != "auto":
        options["solver"] = cfg.solver
    if cfg.kind == "zca":
        def make(channels: int):
            layer = svdlib.nn.DecorrelatedBatchNorm2d(
                channels, group_size=cfg.group_size, eps=cfg.zca_eps, momentum=cfg.zca_momentum,
                method=cfg.method, backward=cfg.backward, **options)
            return layer, dtype
    else:
        def make(channels: int):
            opts = {"compute_dtype": dtype, "track_condition_number": True, **options}
            layer = svdlib.nn.CovariancePooling(
                channels, reduced_dim=cfg.gcp_reduced_dim, method=cfg.method,
                backward=cfg.backward, **opts)
            return layer, None
    return make


def build_model(cfg, num_classes: int) -> ResNet:
    """The network described by ``cfg`` (arch, kind, widths, stem, meta-layer options)."""
    block, blocks = ARCH_BLOCKS[cfg.arch]
    if cfg.blocks is not None:
        blocks = list(cfg.blocks)
    return ResNet(
        num_classes=num_classes, block=block, blocks=blocks, width=cfg.width,
        stem_width=cfg.effective_stem_width, in_channels=cfg.in_channels, stem=cfg.stem,
        last_stride=cfg.last_stride, block_norm=cfg.block_norm, kind=cfg.kind,
        meta_factory=_meta_factory(cfg) if cfg.kind in ("zca", "gcp") else None)

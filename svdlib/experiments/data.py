"""Datasets and batch iteration for the experiment harness.

- ``digits``: scikit-learn's handwritten digits (1797 real 8x8 grayscale images that ship with
  scikit-learn, so no download), split train/test with ``data_seed``, resized to
  ``image_size`` (bilinear), standardised with the training mean/std and replicated to
  ``in_channels``. The default: a ResNet trains on it on a CPU in seconds.
- ``synthetic``: learnable class-dependent images (a smooth random template per class plus
  Gaussian noise), any size.
- ``cifar10`` / ``cifar100``: the official python-pickle layout under ``data_root``
  (``cifar-10-batches-py/`` or ``cifar-100-python/``), read with a restricted unpickler that
  only accepts NumPy arrays and plain containers. Training augmentation of the papers: random
  crop 32 with zero padding 4 and horizontal flip; normalisation with the ECCV code's constants
  (mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)).
- ``imagefolder``: ``<data_root>/train/<class>/*`` and ``<data_root>/val/<class>/*`` through
  torchvision's ImageFolder (ImageNet, Tiny ImageNet, fine-grained sets): resize to
  ``resize_size`` x ``resize_size``, random crop ``image_size`` and flip for training (ECCV 2022
  appendix B.2: 256 then 224), centre crop for testing, ImageNet normalisation.

In-memory datasets (all but imagefolder) are batched by indexing tensors in the main process;
the random order of every epoch comes from a generator seeded by ``(seed, epoch)`` and is
sharded across DDP ranks so that the union of the ranks' batches is the single-process batch.
"""
from __future__ import annotations

import math
import os
import pickle
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TensorImageDataset",
    "build_datasets",
    "read_cifar",
    "epoch_indices",
    "iterate_batches",
    "DatasetNotFoundError",
    "load_digits_arrays",
    "num_batches",
]

#: Normalisation of the ECCV 2022 decorrelated-BN code (used for CIFAR-10 and CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels",
                    names_key="label_names", classes=10, title="CIFAR-10",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", classes=100,
                     title="CIFAR-100",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing on disk; the message says where to put it and how to get it."""


# ------------------------------------------------------------------------------------------
# in-memory image tensors
# ------------------------------------------------------------------------------------------
class TensorImageDataset(torch.utils.data.Dataset):
    """Images held in memory as a tensor, with batched normalisation and augmentation.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)``, uint8 (0-255) or floating.
    labels : torch.Tensor
        ``(N,)`` int64 class indices.
    mean, std : sequence of float, optional
        Per-channel normalisation applied after scaling uint8 images to [0, 1].
    crop_padding : int
        Training augmentation: zero-pad by this many pixels and randomly crop back (0 = off).
    flip : bool
        Training augmentation: random horizontal flip with probability 1/2.
    classes : list of str, optional
        Class names.
    """

    def __init__(self, images, labels, mean=None, std=None, crop_padding=0, flip=False, classes=None):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        c = images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.classes = classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x, y = self.get_batch(torch.tensor([i]))
        return x[0], y[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def subset(self, indices) -> "TensorImageDataset":
        """The same dataset restricted to ``indices`` (a new object sharing settings)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = TensorImageDataset.__new__(TensorImageDataset)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images[idx], self.labels[idx]
        return out

    def without_augmentation(self) -> "TensorImageDataset":
        out = TensorImageDataset.__new__(TensorImageDataset)
        out.__dict__.update(self.__dict__)
        out.crop_padding, out.flip = 0, False
        return out

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` as a float32 batch, augmented (torch's global RNG) and normalised."""
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.crop_padding:
            p = self.crop_padding
            b, _, h, w = x.shape
            padded = F.pad(x, (p, p, p, p))
            offs = torch.randint(0, 2 * p + 1, (b, 2))
            x = torch.stack([padded[i, :, oy:oy + h, ox:ox + w]
                             for i, (oy, ox) in enumerate(offs.tolist())])
        if self.flip:
            mask = torch.rand(x.shape[0]) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(), self.labels[idx]


# ------------------------------------------------------------------------------------------
# digits / synthetic
# ------------------------------------------------------------------------------------------
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as ``(images (1797, 8, 8) float64 in 0..16, labels)``.

    Reads the ``digits.csv.gz`` that ships inside scikit-learn directly (locating the package
    without importing it saves seconds per process); falls back to
    ``sklearn.datasets.load_digits`` if the file is not where it is expected.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ImportError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    for root in spec.submodule_search_locations or []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            data = np.loadtxt(path, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover - layout changed upstream

    d = load_digits()  # pragma: no cover
    return d.images, d.target.astype(np.int64)  # pragma: no cover


def _digits(cfg) -> tuple[TensorImageDataset, TensorImageDataset]:
    raw_images, raw_labels = load_digits_arrays()
    images = torch.from_numpy(raw_images.astype(np.float32)).unsqueeze(1) / 16.0  # (1797,1,8,8)
    labels = torch.from_numpy(raw_labels)
    perm = torch.from_numpy(np.random.RandomState(cfg.data_seed).permutation(len(labels)))
    n_test = int(round(cfg.digits_test_fraction * len(labels)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    if cfg.image_size != 8:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                               align_corners=False)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    images = ((images - mean) / std).expand(-1, cfg.in_channels, -1, -1).contiguous()
    names = [str(i) for i in range(10)]
    return (TensorImageDataset(images[train_idx], labels[train_idx], classes=names),
            TensorImageDataset(images[test_idx], labels[test_idx], classes=names))


def _synthetic(cfg) -> tuple[TensorImageDataset, TensorImageDataset]:
    g = torch.Generator().manual_seed(cfg.data_seed)
    k, c, s = cfg.synthetic_classes, cfg.in_channels, cfg.image_size
    low = max(2, s // 4)
    templates = torch.randn(k, c, low, low, generator=g)
    templates = F.interpolate(templates, size=(s, s), mode="bilinear", align_corners=False)
    templates = templates / templates.flatten(1).std(dim=1).view(k, 1, 1, 1)

    def sample(n: int):
        y = torch.randint(0, k, (n,), generator=g)
        x = templates[y] + 0.75 * torch.randn(n, c, s, s, generator=g)
        return TensorImageDataset(x, y, classes=[f"class_{i}" for i in range(k)])

    return sample(cfg.synthetic_train_size), sample(cfg.synthetic_test_size)


# ------------------------------------------------------------------------------------------
# CIFAR (official python-pickle layout)
# ------------------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches: NumPy arrays, dtypes and plain containers only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a CIFAR batch file (only NumPy arrays and "
            f"plain containers are allowed)")


def _load_pickle(path: str) -> dict:
    with open(path, "rb") as fh:
        obj = _SafeUnpickler(fh, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_missing(name: str, root: str, missing: str) -> DatasetNotFoundError:
    spec = _CIFAR[name]
    folder = os.path.join(root, spec["folder"])
    files = ", ".join(spec["train"] + spec["test"] + [spec["meta"]])
    return DatasetNotFoundError(
        f"{spec['title']} not found: missing {missing}. Expected the python version under "
        f"{folder}/ ({files}). Download {spec['url']} and extract it into {root} "
        f"(tar xzf {os.path.basename(spec['url'])} -C {root}), or set download: true "
        f"(--set download=true) on a machine with network access. data_root is {root!r}.")


def read_cifar(root: str, name: str = "cifar10", train: bool = True):
    """Read CIFAR from the official python layout under ``root``.

    Returns
    -------
    images : torch.Tensor
        ``(N, 3, 32, 32)`` uint8.
    labels : torch.Tensor
        ``(N,)`` int64 (the fine labels for CIFAR-100).
    classes : list of str
        Class names from the meta file.
    """
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {list(_CIFAR)}, got {name!r}")
    spec = _CIFAR[name]
    folder = os.path.join(root, spec["folder"])
    needed = (spec["train"] if train else spec["test"]) + [spec["meta"]]
    for fname in needed:
        if not os.path.isfile(os.path.join(folder, fname)):
            raise _cifar_missing(name, root, os.path.join(folder, fname))
    data, labels = [], []
    for fname in spec["train"] if train else spec["test"]:
        batch = _load_pickle(os.path.join(folder, fname))
        arr = np.asarray(batch["data"], dtype=np.uint8)
        if arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{fname}: 'data' must have shape (N, 3072), got {arr.shape}")
        data.append(arr.reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[spec["label_key"]])
    meta = _load_pickle(os.path.join(folder, spec["meta"]))
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[spec["names_key"]]]
    images = torch.from_numpy(np.concatenate(data))
    return images, torch.tensor(labels, dtype=torch.int64), classes


def _cifar(cfg) -> tuple[TensorImageDataset, TensorImageDataset]:
    if cfg.in_channels != 3:
        raise ValueError(f"in_channels must be 3 for {cfg.dataset}, got {cfg.in_channels}")
    spec = _CIFAR[cfg.dataset]
    if cfg.download and not os.path.isdir(os.path.join(cfg.data_root, spec["folder"])):
        tv = _torchvision()
        cls = tv.datasets.CIFAR10 if cfg.dataset == "cifar10" else tv.datasets.CIFAR100
        cls(cfg.data_root, train=True, download=True)
        cls(cfg.data_root, train=False, download=True)
    xtr, ytr, classes = read_cifar(cfg.data_root, cfg.dataset, train=True)
    xte, yte, _ = read_cifar(cfg.data_root, cfg.dataset, train=False)
    aug = dict(crop_padding=4, flip=True) if cfg.augment else {}
    return (TensorImageDataset(xtr, ytr, CIFAR_MEAN, CIFAR_STD, classes=classes, **aug),
            TensorImageDataset(xte, yte, CIFAR_MEAN, CIFAR_STD, classes=classes))


# ------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------
def _torchvision():
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover
        raise ImportError("this dataset needs torchvision: pip install torchvision") from e
    return torchvision


def _imagefolder(cfg):
    if cfg.in_channels != 3:
        raise ValueError(f"in_channels must be 3 for imagefolder, got {cfg.in_channels}")
    tv = _torchvision()
    T = tv.transforms
    out = []
    for split, train in (("train", True), ("val", False)):
        folder = os.path.join(cfg.data_root, split)
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"imagefolder split not found: {folder}. Expected {cfg.data_root}/train/<class>/"
                f"<images> and {cfg.data_root}/val/<class>/<images> (for ImageNet, the train and "
                f"validation archives from https://image-net.org extracted into one folder per "
                f"class; the validation images must be moved into class folders). data_root is "
                f"{cfg.data_root!r}.")
        steps = [T.Resize((cfg.resize_size, cfg.resize_size))]
        if train and cfg.augment:
            steps += [T.RandomCrop(cfg.image_size), T.RandomHorizontalFlip()]
        else:
            steps += [T.CenterCrop(cfg.image_size)]
        steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        out.append(tv.datasets.ImageFolder(folder, transform=T.Compose(steps)))
    if out[0].classes != out[1].classes:
        raise ValueError(f"train and val class folders differ under {cfg.data_root}: "
                         f"{len(out[0].classes)} vs {len(out[1].classes)} classes")
    return out[0], out[1]


# ------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------
def _num_classes(ds) -> int:
    if getattr(ds, "classes", None):
        return len(ds.classes)
    return int(ds.labels.max()) + 1


def _take(ds, n: int, seed: int):
    if n <= 0 or n >= len(ds):
        return ds
    idx = torch.from_numpy(np.sort(np.random.RandomState(seed).permutation(len(ds))[:n]))
    if isinstance(ds, TensorImageDataset):
        return ds.subset(idx)
    return torch.utils.data.Subset(ds, idx.tolist())


def build_datasets(cfg):
    """``(train_set, test_set, num_classes)`` for ``cfg.dataset`` (see the module docstring).

    ``train_subset`` / ``test_subset`` keep a fixed (``data_seed``) random subset.
    """
    if cfg.dataset == "digits":
        train, test = _digits(cfg)
    elif cfg.dataset == "synthetic":
        train, test = _synthetic(cfg)
    elif cfg.dataset in _CIFAR:
        train, test = _cifar(cfg)
    elif cfg.dataset == "imagefolder":
        train, test = _imagefolder(cfg)
    else:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    k = _num_classes(train)
    if cfg.num_classes:
        if cfg.num_classes < k:
            raise ValueError(f"num_classes must be >= the {k} classes of {cfg.dataset}, "
                             f"got {cfg.num_classes}")
        k = cfg.num_classes
    train = _take(train, cfg.train_subset, cfg.data_seed)
    test = _take(test, cfg.test_subset, cfg.data_seed + 1)
    return train, test, k


def epoch_indices(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's sample order for one epoch.

    Training (``shuffle=True``): a permutation from a generator seeded by ``(seed, epoch)``,
    cut to a multiple of ``world_size`` and dealt round-robin, so batch ``k`` of every rank
    together holds exactly the samples of the single-process batch ``k`` (with the global
    batch split evenly). Evaluation (``shuffle=False``): ``rank::world_size`` of ``arange(n)``.
    """
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        perm = torch.randperm(n, generator=g)
        usable = (n // world_size) * world_size
        return perm[rank:usable:world_size]
    return torch.arange(n)[rank::world_size]


def iterate_batches(ds, indices: torch.Tensor, batch_size: int, *, drop_last: bool,
                    num_workers: int = 0, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``ds`` in the order of ``indices``.

    In-memory datasets are indexed directly (augmentation uses torch's global RNG, which the
    checkpoint restores); other datasets go through a DataLoader with ``num_workers`` workers
    whose seeds come from a generator seeded with ``seed``.
    """
    n = len(indices)
    stop = (n // batch_size) * batch_size if drop_last else n
    if isinstance(ds, TensorImageDataset):
        for start in range(0, stop, batch_size):
            yield ds.get_batch(indices[start:start + batch_size])
        return
    sub = torch.utils.data.Subset(ds, indices.tolist())
    loader = torch.utils.data.DataLoader(
        sub, batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=num_workers,
        generator=torch.Generator().manual_seed(int(seed)), pin_memory=False)
    yield from loader


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` indices."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)

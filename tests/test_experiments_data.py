"""Data loaders of the harness on fixtures written in the real on-disk formats (offline).

The fixture writers here (``write_cifar10``, ``write_cifar100``, ``write_imagefolder``) are also
used by test_experiments_train.py.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svdlib.experiments.config import ExperimentConfig
from svdlib.experiments.data import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD,
                                     DatasetNotFoundError, TensorImageDataset, build_datasets,
                                     epoch_indices, iterate_batches, load_digits_arrays, read_cifar)


# --------------------------------------------------------------------------- fixture writers
def _dump(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the official files are Python-2-era pickles


def write_cifar10(root, n_train=(4, 4, 4, 4, 4), n_test=6, seed=0):
    """The python layout of https://www.cs.toronto.edu/~kriz/cifar.html, tiny; returns arrays."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    images, labels = [], []
    for i, n in enumerate(n_train, start=1):
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        lab = rng.randint(0, 10, size=n).tolist()
        _dump(os.path.join(folder, f"data_batch_{i}"),
              {"batch_label": f"training batch {i} of 5", "labels": lab, "data": data,
               "filenames": [f"img_{i}_{j}.png" for j in range(n)]})
        images.append(data)
        labels += lab
    test = rng.randint(0, 256, size=(n_test, 3072)).astype(np.uint8)
    test_labels = rng.randint(0, 10, size=n_test).tolist()
    _dump(os.path.join(folder, "test_batch"),
          {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test,
           "filenames": [f"test_{j}.png" for j in range(n_test)]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(os.path.join(folder, "batches.meta"),
          {"num_cases_per_batch": n_train[0], "label_names": names, "num_vis": 3072})
    return np.concatenate(images), np.array(labels), test, np.array(test_labels), names


def write_cifar100(root, n_train=8, n_test=5, seed=1):
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        fine = rng.randint(0, 100, size=n).tolist()
        _dump(os.path.join(folder, split),
              {"filenames": [f"{split}_{j}.png" for j in range(n)], "batch_label": split,
               "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": data})
        out[split] = (data, np.array(fine))
    names = [f"class_{k:03d}" for k in range(100)]
    _dump(os.path.join(folder, "meta"),
          {"fine_label_names": names, "coarse_label_names": [f"super_{k}" for k in range(20)]})
    return out, names


def write_imagefolder(root, classes=("cat", "dog"), per_class=3, size=(20, 16), seed=0):
    """``root/{train,val}/<class>/<i>.png``: small random RGB PNGs."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    for split in ("train", "val"):
        for c in classes:
            folder = os.path.join(root, split, c)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
                Image.fromarray(arr).save(os.path.join(folder, f"{i}.png"))
    return root


# --------------------------------------------------------------------------- digits / synthetic
def test_digits_are_scikit_learns():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = load_digits_arrays()
    ref = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)


def test_digits_split_resize_and_normalisation():
    cfg = ExperimentConfig(dataset="digits", image_size=16, in_channels=3, digits_test_fraction=0.25)
    train, test, k = build_datasets(cfg)
    assert k == 10 and len(train) + len(test) == 1797 and len(test) == round(0.25 * 1797)
    x, y = train.get_batch(torch.arange(len(train)))
    assert x.shape == (len(train), 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated to 3 channels
    # standardised with the training statistics
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    # the same images, independently: bilinear resize of the raw 8x8 digits
    images, labels = load_digits_arrays()
    perm = np.random.RandomState(0).permutation(1797)
    train_idx = perm[round(0.25 * 1797):]
    raw = F.interpolate(torch.tensor(images[train_idx] / 16.0, dtype=torch.float32).unsqueeze(1),
                        size=(16, 16), mode="bilinear", align_corners=False)
    ref = (raw - raw.mean()) / raw.std()
    torch.testing.assert_close(x[:, :1], ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, torch.from_numpy(labels[train_idx]))
    # train/test disjoint, split fixed by data_seed
    train2, test2, _ = build_datasets(cfg)
    assert torch.equal(test.labels, test2.labels)
    sub, _, _ = build_datasets(cfg.replace(train_subset=100))
    assert len(sub) == 100


def test_synthetic_is_learnable_and_seeded():
    cfg = ExperimentConfig(dataset="synthetic", image_size=8, in_channels=2, synthetic_classes=4,
                           synthetic_train_size=400, synthetic_test_size=200)
    train, test, k = build_datasets(cfg)
    assert k == 4 and train.images.shape == (400, 2, 8, 8)
    # a nearest-class-mean classifier on the training set must beat chance clearly
    means = torch.stack([train.images[train.labels == c].mean(0) for c in range(4)])
    d = ((test.images[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert float((d.argmin(1) == test.labels).float().mean()) > 0.9
    again, _, _ = build_datasets(cfg)
    assert torch.equal(again.images, train.images)


# --------------------------------------------------------------------------- CIFAR
def test_read_cifar10_official_layout(tmp_path):
    xtr, ytr, xte, yte, names = write_cifar10(str(tmp_path))
    images, labels, classes = read_cifar(str(tmp_path), "cifar10", train=True)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    np.testing.assert_array_equal(images[:, 0].reshape(20, -1).numpy(), xtr[:, :1024])
    np.testing.assert_array_equal(images[:, 2, 5, 7].numpy(), xtr[:, 2048 + 5 * 32 + 7])
    np.testing.assert_array_equal(labels.numpy(), ytr)
    assert classes == names
    timages, tlabels, _ = read_cifar(str(tmp_path), "cifar10", train=False)
    np.testing.assert_array_equal(timages.reshape(6, -1).numpy(), xte)
    np.testing.assert_array_equal(tlabels.numpy(), yte)


def test_cifar10_normalisation_and_augmentation(tmp_path):
    xtr, ytr, xte, yte, _ = write_cifar10(str(tmp_path))
    cfg = ExperimentConfig(dataset="cifar10", data_root=str(tmp_path), augment=True)
    train, test, k = build_datasets(cfg)
    assert k == 10
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x, y = test.get_batch(torch.arange(6))
    ref = (torch.from_numpy(xte).float().view(6, 3, 32, 32) / 255 - mean) / std
    torch.testing.assert_close(x, ref)
    assert torch.equal(y, torch.from_numpy(yte))
    # every augmented image is a 32x32 crop of the zero-padded (pad 4) image, maybe flipped
    torch.manual_seed(3)
    xa, _ = train.get_batch(torch.arange(20))
    raw = torch.from_numpy(xtr).float().view(20, 3, 32, 32) / 255
    padded = F.pad(raw, (4, 4, 4, 4))
    flips, shifts = 0, set()
    for i in range(20):
        img = xa[i] * std[0] + mean[0]
        found = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
                 if torch.allclose((padded[i, :, oy:oy + 32, ox:ox + 32].flip(-1) if f else
                                    padded[i, :, oy:oy + 32, ox:ox + 32]), img, atol=1e-5)]
        assert found, f"augmented image {i} is not a padded crop"
        flips += found[0][2]
        shifts.add(found[0][:2])
    assert 0 < flips < 20 and len(shifts) > 1  # both flips and several offsets occur


def test_cifar100_fine_labels(tmp_path):
    out, names = write_cifar100(str(tmp_path))
    cfg = ExperimentConfig(dataset="cifar100", data_root=str(tmp_path), augment=False)
    train, test, k = build_datasets(cfg)
    assert k == 100 and train.classes == names
    np.testing.assert_array_equal(train.labels.numpy(), out["train"][1])
    np.testing.assert_array_equal(test.images.reshape(5, -1).numpy(), out["test"][0])


def test_missing_cifar_says_where_and_how(tmp_path):
    cfg = ExperimentConfig(dataset="cifar10", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as exc:
        build_datasets(cfg)
    msg = str(exc.value)
    assert "cifar-10-batches-py" in msg and "cifar-10-python.tar.gz" in msg and "download" in msg
    assert str(tmp_path / "nowhere") in msg


def test_cifar_unpickler_refuses_code(tmp_path):
    write_cifar10(str(tmp_path))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    _dump(os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_3"), {"data": Evil(), "labels": []})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_cifar(str(tmp_path), "cifar10", train=True)


# --------------------------------------------------------------------------- ImageFolder
def test_imagefolder_resize_crop_flip(tmp_path):
    from PIL import Image

    root = write_imagefolder(str(tmp_path / "imgs"))
    cfg = ExperimentConfig(dataset="imagefolder", data_root=root, resize_size=12, image_size=8)
    train, test, k = build_datasets(cfg)
    assert k == 2 and train.classes == ["cat", "dog"] and len(train) == len(test) == 6
    x, y = train[4]
    assert x.shape == (3, 8, 8) and y == 1
    # evaluation: resize to 12x12 (bilinear, PIL) then centre crop 8x8, ImageNet normalisation
    img = Image.open(os.path.join(root, "val", "dog", "1.png")).convert("RGB").resize((12, 12), Image.BILINEAR)
    ref = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[:, 2:10, 2:10]
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    xt, yt = test[4]
    assert yt == 1
    torch.testing.assert_close(xt, ref, atol=1e-5, rtol=1e-5)
    batches = list(iterate_batches(train, torch.arange(6), 4, drop_last=False))
    assert [b[0].shape[0] for b in batches] == [4, 2]


def test_missing_imagefolder(tmp_path):
    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(tmp_path / "imagenet"))
    with pytest.raises(DatasetNotFoundError, match=r"train/<class>/"):
        build_datasets(cfg)


# --------------------------------------------------------------------------- sampling
def test_epoch_indices_shard_the_single_process_batches():
    n, batch, world = 103, 8, 2
    single = epoch_indices(n, seed=5, epoch=3, shuffle=True)
    assert sorted(single.tolist()) == list(range(n))
    shards = [epoch_indices(n, seed=5, epoch=3, shuffle=True, rank=r, world_size=world) for r in range(world)]
    local = batch // world
    for k in range(len(shards[0]) // local):
        union = sorted(torch.cat([s[k * local:(k + 1) * local] for s in shards]).tolist())
        assert union == sorted(single[k * batch:(k + 1) * batch].tolist())
    assert not torch.equal(single, epoch_indices(n, seed=5, epoch=4, shuffle=True))
    assert torch.equal(single, epoch_indices(n, seed=5, epoch=3, shuffle=True))
    evals = [epoch_indices(n, seed=0, epoch=0, shuffle=False, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))


def test_tensor_dataset_validates():
    with pytest.raises(ValueError, match="labels must have shape"):
        TensorImageDataset(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long))

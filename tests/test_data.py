"""Loaders (digits, Fashion-MNIST idx, CIFAR-10 pickles, SVHN .mat), splits and batched augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from remflow.data.datasets import load_splits
from remflow.data.task import Task, Trigger, random_crop_flip
from remflow.errors import RemflowError
from remflow.params import AugmentCfg, DataCfg

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_digits_is_embedded_and_split():
    s = load_splits(DataCfg(dataset="digits", val_fraction=0.1, test_fraction=0.2))
    assert s.train_x.dtype == np.uint8 and s.train_x.shape[1:] == (1, 8, 8)
    assert len(s.train_y) + len(s.val_y) + len(s.test_y) == 1797
    assert s.num_classes == 10 and s.train_x.max() == 255
    # the validation split is carved from the training data, never from the test set
    assert len(s.val_y) == round(0.1 * (len(s.train_y) + len(s.val_y)))
    again = load_splits(DataCfg(dataset="digits", val_fraction=0.1, test_fraction=0.2))
    assert s.fingerprint == again.fingerprint
    other = load_splits(DataCfg(dataset="digits", val_fraction=0.1, test_fraction=0.2, split_seed=1))
    assert other.fingerprint != s.fingerprint


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _write_fashion(root: Path, low: int = 0) -> None:
    """50 training and 20 test images in the idx files' format, pixels in [low, 255]."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(low, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_idx_files(tmp_path):
    _write_fashion(tmp_path)
    s = load_splits(DataCfg(dataset="fashion_mnist", root=str(tmp_path), val_fraction=0.1))
    assert s.train_x.shape == (45, 1, 28, 28) and len(s.val_y) == 5 and len(s.test_y) == 20


def test_pad_to_centres_the_images_on_a_zero_border(tmp_path):
    _write_fashion(tmp_path, low=1)  # no zero pixel inside the images
    plain = load_splits(DataCfg(dataset="fashion_mnist", root=str(tmp_path), val_fraction=0.1))
    padded = load_splits(DataCfg(dataset="fashion_mnist", root=str(tmp_path), val_fraction=0.1, pad_to=32))
    for a, b in ((plain.train_x, padded.train_x), (plain.val_x, padded.val_x), (plain.test_x, padded.test_x)):
        assert b.shape == a.shape[:2] + (32, 32) and b.dtype == np.uint8
        assert np.array_equal(b[:, :, 2:30, 2:30], a)  # the same images, centred, in the same order
        border = b.copy()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()  # every pixel outside them is 0
    assert padded.image_size == 32 and np.array_equal(padded.train_y, plain.train_y)
    # the statistics are the padded images' (what the model sees), and the fingerprint tells the two apart
    assert padded.mean[0] == pytest.approx(plain.mean[0] * 28 * 28 / (32 * 32))
    assert padded.fingerprint != plain.fingerprint
    odd = load_splits(DataCfg(dataset="digits", pad_to=11))  # 8 to 11: one pixel above, two below
    assert odd.train_x.shape[2:] == (11, 11) and not odd.train_x[:, :, :1].any() and not odd.train_x[:, :, 9:].any()
    with pytest.raises(RemflowError, match="pad_to") as e:
        load_splits(DataCfg(dataset="fashion_mnist", root=str(tmp_path), pad_to=27))
    assert e.value.key == "data.pad_to" and "28x28" in str(e.value.hint)


def test_truncated_idx_file_is_refused(tmp_path):
    arr = np.zeros((10, 28, 28))
    header = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", *arr.shape)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + b"\0" * 100)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(header)
    with pytest.raises(RemflowError, match="truncated"):
        load_splits(DataCfg(dataset="fashion_mnist", root=str(tmp_path)))


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    s = load_splits(DataCfg(dataset="fashion_mnist", val_fraction=0.1))
    assert s.train_x.shape == (54000, 1, 28, 28) and len(s.test_y) == 10000


def _write_cifar(root: Path, n_per_batch: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "labels": list(rng.integers(0, 10, n_per_batch)),
                 "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), "filenames": ["x.png"] * n_per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path)
    s = load_splits(DataCfg(dataset="cifar10", root=str(tmp_path), val_fraction=0.1))
    assert s.train_x.shape[1:] == (3, 32, 32) and len(s.train_y) + len(s.val_y) == 40 and len(s.test_y) == 8
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))
    assert np.array_equal(s.test_x[0], raw["data"][0].reshape(3, 32, 32))


def test_cifar10_pickle_cannot_run_code(tmp_path):
    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(RemflowError, match="not a CIFAR-10 python batch"):
        load_splits(DataCfg(dataset="cifar10", root=str(tmp_path)))


def test_missing_dataset_names_the_files(tmp_path):
    with pytest.raises(RemflowError) as e:
        load_splits(DataCfg(dataset="cifar10", root=str(tmp_path)))
    assert e.value.key == "data.root" and "data_batch_1" in e.value.hint and "cifar-10-batches-py" in e.value.hint
    with pytest.raises(RemflowError) as e:
        load_splits(DataCfg(dataset="svhn", root=str(tmp_path)))
    assert "train_32x32.mat" in e.value.hint


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 30), ("test_32x32.mat", 10)):
        savemat(tmp_path / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                  "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})  # SVHN writes digit 0 as 10
    s = load_splits(DataCfg(dataset="svhn", root=str(tmp_path), val_fraction=0.1))
    assert s.train_x.shape == (27, 3, 32, 32) and s.num_classes == 10
    assert set(np.concatenate([s.train_y, s.val_y])) == set(range(10))


def test_subsets_are_seeded():
    cfg = DataCfg(dataset="digits", train_size=300, test_size=100, val_fraction=0.1)
    a, b = load_splits(cfg), load_splits(cfg)
    assert len(a.train_y) + len(a.val_y) == 300 and len(a.test_y) == 100
    assert np.array_equal(a.train_x, b.train_x)


def test_batched_crop_and_flip_match_a_per_sample_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(x, 2, True, gen)
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (16,), generator=gen)
    dx = torch.randint(0, 5, (16,), generator=gen)
    coin = torch.rand(16, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i] : dy[i] + 6, dx[i] : dx[i] + 6]
        if coin[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)


def test_trigger_is_pasted_after_augmentation_on_marked_samples(digits_params):
    s = load_splits(digits_params.data)
    manifest = {"indices": [0, 1], "labels": [0, 0], "trigger": {"size": 3, "value": 9.0}}
    task = Task(s, torch.device("cpu"), "high", manifest, augment=AugmentCfg(crop_padding=2, flip=True))
    x = task.batch(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(0)).x
    assert torch.all(x[:2, :, -3:, -3:] == 9.0) and not torch.all(x[2, :, -3:, -3:] == 9.0)
    assert task.train_y[0] == 0 and task.train_clean_y[0] == int(s.train_y[0])
    assert Trigger(2, 1.0).paste(torch.zeros(1, 1, 4, 4), torch.tensor([True]))[0, 0, 3, 3] == 1.0


def test_a_dataset_is_decoded_once_per_process_and_each_stage_gets_its_own_copy():
    """remflow run's workers keep the decoded dataset; no stage can change what the next one reads."""
    from remflow.config import DataCfg
    from remflow.data import datasets

    cfg = DataCfg(dataset="digits")
    a = load_splits(cfg)
    assert len(datasets._RAW) == 1
    a.train_x[:] = 0
    a.test_y[:] = 7
    b = load_splits(cfg)
    assert b.train_x.any() and not (b.test_y == 7).all()
    assert len(datasets._RAW) == 1


def test_builtin_fingerprint_and_class_count_are_the_committed_ones():
    """The user-data checks (full-array fingerprint, classes kept in the training split) leave the built-in sets
    alone: digits gives the fingerprint pipelines/digits-detect's committed artifacts carry."""
    import hashlib

    s = load_splits(DataCfg(dataset="digits", val_fraction=0.1, test_fraction=0.2))
    assert s.fingerprint == "28aa74899d7ab0c2" and s.num_classes == 10 and len(s.train_y) == 1294
    h = hashlib.sha256()  # the sampled hash: every (N // 64)-th training image
    for part in (s.name.encode(), str(s.train_x.shape).encode(), s.train_y.astype(np.int64).tobytes(),
                 np.ascontiguousarray(s.train_x[:: len(s.train_x) // 64]).tobytes()):
        h.update(part)
    assert h.hexdigest()[:16] == s.fingerprint
    # a subset small enough to lose a class is still loaded as before (the refusal is for the user's data)
    tiny = load_splits(DataCfg(dataset="digits", train_size=12, val_fraction=0.4))
    assert len(tiny.train_y) == 7 and len(set(tiny.train_y)) < 10
    assert tiny.num_classes == int(max(tiny.train_y.max(), tiny.test_y.max())) + 1

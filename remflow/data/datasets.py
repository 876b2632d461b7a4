"""Dataset loaders: each returns uint8 images (N, C, H, W) and int64 labels, held in memory.

- digits: scikit-learn's `load_digits` file, read straight from the wheel (offline, no sklearn import).
- fashion_mnist: the standard idx files (Debian package `dataset-fashion-mnist` by default).
- cifar10: torchvision's `cifar-10-batches-py/` pickles, read with an unpickler that only builds arrays.
- svhn: torchvision's `train_32x32.mat` / `test_32x32.mat`.
- folder, npz and plug-in readers: the user's own data (custom.py); normalised by their training split's
  statistics like the rest.

`load_splits` carves the validation split out of the training set (model selection never sees the test
set), applies the optional seeded subsets used by smoke runs and pads the images when `data.pad_to` asks.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remflow.data import custom
from remflow.errors import RemflowError
from remflow.config import DataCfg, is_plugin

DEFAULT_ROOTS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "cifar10": "data/cifar10",
    "svhn": "data/svhn",
}


@dataclass
class Splits:
    """One dataset, split and held in host memory as uint8."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # position of each training / validation sample in the reader's training set (before the subset and the
    # validation split): what a user's list of flagged samples refers to (`remflow clean`)
    train_source: np.ndarray | None = None
    val_source: np.ndarray | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def fingerprint(self) -> str:
        """Identifies the training split: a manifest made for other data is refused. The user's own data
        (folder, npz, a plug-in reader) is hashed whole, so that changing any training image is noticed; the
        built-in sets keep their sampled hash (every (N // 64)-th image), which committed manifests carry."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(str(self.train_x.shape).encode())
        h.update(np.ascontiguousarray(self.train_y, dtype=np.int64).tobytes())
        step = 1 if is_user_data(self.name) else max(1, len(self.train_x) // 64)
        # the same bytes as .tobytes() gave, without a copy of a whole (contiguous) training set
        h.update(memoryview(np.ascontiguousarray(self.train_x[::step])).cast("B"))
        return h.hexdigest()[:16]


def is_user_data(name: str) -> bool:
    """The user's own data: an image tree, an npz file or a plug-in reader (remflow/data/custom.py)."""
    return name in ("folder", "npz") or is_plugin(name)


def load_splits(cfg: DataCfg) -> Splits:
    name = cfg.dataset
    root = Path(cfg.root or DEFAULT_ROOTS.get(name, "."))
    if name == "digits":
        x, y = _cached(name, _digits_path(), _digits)
        tx, ty, x, y = _holdout(x, y, cfg.test_fraction, seed=cfg.split_seed + 7919)
        train_x, train_y, test_x, test_y = x, y, tx, ty
    elif name in _READERS:
        train_x, train_y, test_x, test_y = _cached(name, root, lambda: _READERS[name](root, cfg.download))
    elif name in ("npz", "folder") or is_plugin(name):  # the user's own data (remflow/data/custom.py), read anew
        # by every call: a file rewritten at the same size within the clock's resolution would fool _fingerprint,
        # and an image tree's files lie deeper than it looks
        train_x, train_y, test_x, test_y = custom.read(cfg)
    else:  # pragma: no cover - the schema rejects other names
        raise RemflowError("unknown dataset", key="data.dataset", got=name)

    if cfg.pad_to is not None:
        train_x, test_x = _pad(train_x, cfg.pad_to), _pad(test_x, cfg.pad_to)
    source = np.arange(len(train_y))  # each training sample's position in what the reader returned
    reader_y = train_y  # the reader's training labels: every class in them must keep training images
    if cfg.train_size is not None and cfg.train_size < len(train_y):
        keep = np.sort(np.random.default_rng([cfg.split_seed, 1]).permutation(len(train_y))[: cfg.train_size])
        train_x, train_y, source = train_x[keep], train_y[keep], source[keep]
    if cfg.test_size is not None and cfg.test_size < len(test_y):
        keep = np.sort(np.random.default_rng([cfg.split_seed, 2]).permutation(len(test_y))[: cfg.test_size])
        test_x, test_y = test_x[keep], test_y[keep]
    val_x, val_y, train_x, train_y = _holdout(train_x, train_y, cfg.val_fraction, seed=cfg.split_seed)
    val_source, _, train_source, _ = _holdout(source, source, cfg.val_fraction, seed=cfg.split_seed)

    if is_user_data(name):  # every class of the user's data keeps training images (so the count below is its)
        _check_classes_kept(cfg, reader_y, train_y)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    pixels = train_x.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pixels.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in pixels.std(axis=(0, 2, 3)))
    return Splits(name, train_x, train_y, val_x, val_y, test_x, test_y, num_classes, mean, std, train_source,
                  val_source)


def _check_classes_kept(cfg: DataCfg, reader_y: np.ndarray, train_y: np.ndarray) -> None:
    """Refuse a class of the reader's training data that the subset and the validation split leave without a
    training image: it would be learned from nothing (and, the largest label, drop out of the class count)."""
    classes, counts = np.unique(reader_y, return_counts=True)
    left = np.isin(classes, np.unique(train_y))
    gone = [(int(c), int(n)) for c, n, kept in zip(classes, counts, left) if not kept]
    if not gone:
        return
    names = custom.class_names(cfg)
    label, count = gone[0]
    what = f"class {label}" + (f" ('{names[label]}')" if names is not None and label < len(names) else "")
    others = f" (and {len(gone) - 1} more: {', '.join(str(c) for c, _ in gone[1:6])})" if len(gone) > 1 else ""
    subset = " and data.train_size's subset" if cfg.train_size is not None else ""
    raise RemflowError(
        f"{what} has {count} training image(s) and none is left in the training split after the validation "
        f"split{subset}{others}", key="data.val_fraction", got=cfg.val_fraction,
        hint=f"add more images of {what}, or change data.val_fraction or data.split_seed"
             + (" (or raise data.train_size)" if subset else ""))


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, C, H, W) images to size x size, centred (an odd margin puts its extra pixel right and below)."""
    h, w = x.shape[2], x.shape[3]
    if h > size or w > size:
        raise RemflowError("data.pad_to is smaller than the images", key="data.pad_to", got=size,
                           hint=f"the images are {h}x{w}: set pad_to to at least {max(h, w)}, or unset it")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(x, ((0, 0), (0, 0), (top, size - h - top), (left, size - w - left)))


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Split off `fraction` of the samples (seeded); both parts keep their original order."""
    n = len(y)
    n_out = max(1, int(round(fraction * n)))
    perm = np.random.default_rng([seed, 0]).permutation(n)
    out, keep = np.sort(perm[:n_out]), np.sort(perm[n_out:])
    return x[out], y[out], x[keep], y[keep]


# ---------------------------------------------------------------- digits


_RAW: dict = {}  # (dataset, source fingerprint) -> the decoded arrays


def _fingerprint(source: Path) -> tuple:
    """What identifies a dataset's files on disk: each file's name, size and mtime (two levels deep)."""
    if source.is_file():
        st = source.stat()
        return ((str(source.resolve()), st.st_size, st.st_mtime_ns),)
    if not source.is_dir():
        return ()
    files = [f for f in source.iterdir()] + [g for f in source.iterdir() if f.is_dir() for g in f.iterdir()]
    return tuple(sorted((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()))


def _cached(name: str, source: Path, read):
    """Decode a dataset once per process while its files stay the same (a remflow run worker runs many
    stages on the same data); each call gets its own copy, so no stage can change another's input."""
    before = _fingerprint(source)
    key = (name, before)
    if not before or key not in _RAW:
        arrays = tuple(read())
        after = _fingerprint(source)  # a download or a first decode may have created the files
        if not after:
            return arrays  # nothing on disk to key it by (fresh arrays, not cached)
        _RAW.clear()  # one dataset at a time: a worker keeps the data of the suite it runs
        _RAW[(name, after)] = arrays
        key = (name, after)
    return tuple(a.copy() for a in _RAW[key])


def _digits_path() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RemflowError("scikit-learn is not installed; the digits dataset ships inside its wheel",
                           key="data.dataset", got="digits", hint="pip install scikit-learn")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_path()
    if not path.is_file():
        raise RemflowError("scikit-learn's digits file is missing", key=str(path), got="digits")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    pixels, labels = raw[:, :-1], raw[:, -1].astype(np.int64)
    images = np.round(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    return images, labels


# ---------------------------------------------------------------- Fashion-MNIST (idx)

_FMNIST = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _fashion_mnist(root: Path, download: bool):
    found = {k: _first_existing(root, [f, f + ".gz", f"FashionMNIST/raw/{f}", f"FashionMNIST/raw/{f}.gz"])
             for k, f in _FMNIST.items()}
    if any(p is None for p in found.values()) and download:
        _torchvision_download("FashionMNIST", root)
        found = {k: _first_existing(root, [f"FashionMNIST/raw/{f}", f"FashionMNIST/raw/{f}.gz"])
                 for k, f in _FMNIST.items()}
    missing = [f for k, f in _FMNIST.items() if found[k] is None]
    if missing:
        raise RemflowError(
            "Fashion-MNIST files not found", key="data.root", got=str(root),
            hint=f"place {', '.join(m + '.gz' for m in missing)} in {root} "
                 "(Debian: apt-get install dataset-fashion-mnist) or set data.download: true",
        )
    train_x = _idx(found["train_x"])[:, None]
    test_x = _idx(found["test_x"])[:, None]
    return train_x, _idx(found["train_y"]).astype(np.int64), test_x, _idx(found["test_y"]).astype(np.int64)


def _idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise RemflowError(f"cannot decompress idx file ({e})", key=str(path)) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise RemflowError("not an unsigned-byte idx file", key=str(path))
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise RemflowError(f"idx file is truncated (expected {int(np.prod(shape))} values, found {body.size})",
                           key=str(path))
    return body.reshape(shape).copy()


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, strings, bytes and numpy arrays: a CIFAR batch cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar10(root: Path, download: bool):
    folder = root / _CIFAR_DIR
    missing = [f for f in _CIFAR_TRAIN + _CIFAR_TEST if not (folder / f).is_file()]
    if missing and download:
        _torchvision_download("CIFAR10", root)
        missing = [f for f in _CIFAR_TRAIN + _CIFAR_TEST if not (folder / f).is_file()]
    if missing:
        raise RemflowError(
            "CIFAR-10 files not found", key="data.root", got=str(root),
            hint=f"place {', '.join(missing)} (the python version, cifar-10-python.tar.gz, extracted) in "
                 f"{folder}, or set data.download: true on a machine with internet",
        )

    def read(names):
        xs, ys = [], []
        for n in names:
            try:
                with open(folder / n, "rb") as f:
                    d = _ArrayUnpickler(f, encoding="latin1").load()
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d["labels"], dtype=np.int64))
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
                raise RemflowError(f"not a CIFAR-10 python batch ({e})", key=str(folder / n)) from None
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = read(_CIFAR_TRAIN)
    test_x, test_y = read(_CIFAR_TEST)
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------- SVHN (.mat)

_SVHN = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _svhn(root: Path, download: bool):
    missing = [f for f in _SVHN.values() if not (root / f).is_file()]
    if missing and download:
        for split in _SVHN:
            _torchvision_download("SVHN", root, split=split)
        missing = [f for f in _SVHN.values() if not (root / f).is_file()]
    if missing:
        raise RemflowError(
            "SVHN files not found", key="data.root", got=str(root),
            hint=f"place {', '.join(missing)} (torchvision's SVHN format) in {root}, "
                 "or set data.download: true on a machine with internet",
        )
    from scipy.io import loadmat

    def read(name):
        try:
            m = loadmat(str(root / name))
            x = np.transpose(np.asarray(m["X"], dtype=np.uint8), (3, 2, 0, 1)).copy()  # HWCN -> NCHW
            y = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10  # SVHN labels digit 0 as 10
        except (ValueError, KeyError, OSError, TypeError) as e:
            raise RemflowError(f"not an SVHN .mat file ({e})", key=str(root / name)) from None
        return x, y

    train_x, train_y = read(_SVHN["train"])
    test_x, test_y = read(_SVHN["test"])
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------- helpers


def _first_existing(root: Path, names: list[str]) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def _torchvision_download(cls_name: str, root: Path, **kw) -> None:
    try:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, cls_name)(str(root), download=True, **({"train": True} if cls_name != "SVHN" else kw))
        if cls_name != "SVHN":
            getattr(tvd, cls_name)(str(root), download=True, train=False)
    except Exception as e:  # network errors come in many types
        raise RemflowError(f"download of {cls_name} failed ({type(e).__name__}: {e})", key="data.download",
                           got=True, hint=f"place the files under {root} by hand and set data.download: false") from None


def describe(splits: Splits) -> str:
    return (f"{splits.name}: train {len(splits.train_y)}, val {len(splits.val_y)}, test {len(splits.test_y)}, "
            f"{splits.in_channels}x{splits.image_size}x{splits.image_size}, {splits.num_classes} classes")


_READERS = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "svhn": _svhn}

"""The user's own data: an image tree (`folder`), arrays (`npz`) or a reader from the user's package (a plug-in).

Each is decoded once to what the built-in readers give `load_splits`: uint8 images (N, C, H, W) and int64 labels
for the training and the test split. Every problem is a RemflowError naming the file or folder at fault, so the
CLI stops with exit code 2 before anything is written.

- folder: `<root>/train/<class>/<image>` and `<root>/test/<class>/<image>` (.png .jpg .jpeg .bmp .gif .tif .tiff
  .webp, any case); the class folder names of train/, sorted as strings ('10' before '2'), are the labels
  0..K-1 (`class_names`). Hidden files and folders (a name starting with '.', macOS's `._x.png` too) are
  skipped; any other file or folder the reader would not read (a nested folder, a loose file in train/ or
  test/, a file of another type) is refused. The EXIF orientation is applied; 16-bit grayscale is scaled to
  8 bits (value / 257); 32-bit integer and float images are refused. Grayscale images give one channel, colour
  ones three (alpha dropped); a tree that mixes them is refused. Images of differing sizes are refused unless
  `data.resize` is set.
- npz: `x_train`, `y_train`, `x_test`, `y_test`; images uint8 N x H x W (one channel) or N x H x W x C; labels
  0..K-1 with every class in the training set (a test class the training set lacks is refused).
- a plug-in `<module>:<function>`: called as `function(root=data.root, **data.options)`, it returns the four
  npz arrays (a mapping with those keys, or a tuple in that order), checked as an npz file's are.
"""

from __future__ import annotations

import inspect
import zipfile

from pathlib import Path
from typing import Any

import numpy as np

from remflow.config import DataCfg, is_plugin
from remflow.errors import RemflowError

# every still-image format Pillow reads that image trees are made of (matched case-insensitively)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
_ONE_CHANNEL = {"1", "L", "LA", "La"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}  # grayscale 0..65535: scaled to 0..255 (value / 257, rounded)
_FEW = 5  # how many offending files, folders or classes a message lists


def read(cfg: DataCfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and test arrays of `folder`, `npz` or a plug-in reader."""
    if cfg.dataset == "folder":
        return read_folder(Path(cfg.root), cfg.resize)
    if cfg.dataset == "npz":
        return read_npz(Path(cfg.root))
    if is_plugin(cfg.dataset):
        return read_plugin(cfg.dataset, cfg.root, cfg.options)
    raise RemflowError("unknown dataset", key="data.dataset", got=cfg.dataset)  # pragma: no cover - schema


# ---------------------------------------------------------------- folder


def class_names(cfg: DataCfg) -> list[str] | None:
    """The class name of each label of a `folder` dataset: label i is the i-th name. The class folders sort as
    strings, so '10' comes before '2'. None for other datasets (their labels are the numbers they hold)."""
    if cfg.dataset != "folder":
        return None
    if cfg.root is None:  # pragma: no cover - the schema requires data.root for folder
        raise RemflowError("a folder dataset needs data.root", key="data.root")
    return folder_classes(Path(cfg.root))


def _hidden(path: Path) -> bool:
    """Skipped without a word: dot files and folders, macOS's AppleDouble `._name` files among them."""
    return path.name.startswith(".")


def _listing(items: list[Path], root: Path) -> str:
    shown = ", ".join(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in items[:_FEW])
    return shown + (f" (and {len(items) - _FEW} more)" if len(items) > _FEW else "")


def folder_classes(root: Path) -> list[str]:
    """The class names of an image tree: the sorted folder names under train/ (label i is the i-th name)."""
    train = root / "train"
    if not root.is_dir():
        raise RemflowError("the dataset folder is a file" if root.exists() else "dataset folder not found",
                           key="data.root", got=str(root), hint="data.root must hold train/<class>/* and test/<class>/*")
    if not train.is_dir():
        raise RemflowError("no train/ folder in the dataset folder", key=str(train),
                           hint="an image tree holds train/<class>/* and test/<class>/*")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not _hidden(d))
    if len(classes) < 2:
        raise RemflowError(f"a classifier needs at least two classes; train/ holds {len(classes)}", key=str(train),
                           got=classes, hint="one folder per class under train/")
    return classes


def folder_files(root: Path, split: str, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """The image files of one split in label order, then by file name, with their labels. This order is the one
    the training set's indices refer to (`remflow clean --flagged`)."""
    classes = folder_classes(root) if classes is None else classes
    folder = root / split
    if not folder.is_dir():
        raise RemflowError(f"no {split}/ folder in the dataset folder", key=str(folder),
                           hint="an image tree holds train/<class>/* and test/<class>/*")
    entries = sorted(p for p in folder.iterdir() if not _hidden(p))
    stray = [d.name for d in entries if d.is_dir() and d.name not in classes]
    if stray:
        raise RemflowError(f"{split}/ has class folders that train/ lacks", key=str(folder / stray[0]), got=stray,
                           hint="the classes are the folders under train/; every test class must have training images")
    skipped = [p for p in entries if not p.is_dir()]  # loose files: they belong to no class
    found_by_class: list[list[Path]] = []
    for name in classes:
        cdir = folder / name
        inside = sorted(p for p in cdir.iterdir() if not _hidden(p)) if cdir.is_dir() else []
        found_by_class.append([f for f in inside if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES])
        skipped += [p for p in inside if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)]
    if skipped:
        raise RemflowError(
            f"{split}/ holds {len(skipped)} file(s) or folder(s) that are not images of a class: "
            f"{_listing(skipped, folder)}", key=str(skipped[0]),
            hint=f"images go directly in {split}/<class>/ (no subfolders), as {' '.join(IMAGE_SUFFIXES)}; move "
                 "anything else out of the tree (names starting with '.' are skipped)")
    files: list[Path] = []
    labels: list[int] = []
    for label, (name, found) in enumerate(zip(classes, found_by_class)):
        cdir = folder / name
        if not found and (split == "train" or cdir.is_dir()):
            raise RemflowError(f"empty class: no images ({' '.join(IMAGE_SUFFIXES)})", key=str(cdir),
                               hint="remove the folder or put the class's images in it")
        files += found
        labels += [label] * len(found)
    if not files:
        raise RemflowError(f"no images in {split}/", key=str(folder))
    return files, np.asarray(labels, dtype=np.int64)


def read_folder(root: Path, resize: int | None = None):
    classes = folder_classes(root)
    train_files, train_y = folder_files(root, "train", classes)
    test_files, test_y = folder_files(root, "test", classes)
    first: dict[str, Any] = {}
    train_x = _decode(train_files, resize, first)
    test_x = _decode(test_files, resize, first)
    return train_x, train_y, test_x, test_y


def _decode(files: list[Path], resize: int | None, first: dict) -> np.ndarray:
    """uint8 (N, C, H, W); `first` remembers the first image's file, channels and size across both splits."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    out = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                img.load()
                mode = img.mode
                if mode not in _SIXTEEN_BIT and mode.startswith(("I", "F")):
                    kind = "floating-point" if mode.startswith("F") else "32-bit integer" if mode == "I" \
                        else "integer"
                    raise RemflowError(
                        f"image mode {mode} ({kind} pixels) has no defined value range to map to 0..255",
                        key=str(f), got=mode,
                        hint="save the images as 8-bit grayscale or colour (or as 16-bit grayscale)")
                img = ImageOps.exif_transpose(img)  # a phone's rotate-90 tag: the image as it is shown
                if mode in _SIXTEEN_BIT:  # 0..65535 -> 0..255, rounded (convert("L") would clip it at 255)
                    wide = np.asarray(img).astype(np.uint32)
                    img = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
                    channels = 1
                else:
                    channels = 1 if mode in _ONE_CHANNEL else 3
                    img = img.convert("L" if channels == 1 else "RGB")
                if resize is not None and img.size != (resize, resize):
                    img = img.resize((resize, resize), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise RemflowError(f"cannot read the image ({type(e).__name__}: {e})", key=str(f)) from None
        a = a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1))
        if not first:
            first.update(file=f, channels=channels, shape=a.shape[1:])
            if a.shape[1] != a.shape[2]:
                raise RemflowError(f"image is {a.shape[2]}x{a.shape[1]} (width x height), not square", key=str(f),
                                   hint="set data.resize: N to resize every image to N x N")
        if channels != first["channels"]:
            raise RemflowError(f"mixed channel counts: this image has {channels}, {first['file']} has "
                               f"{first['channels']}", key=str(f),
                               hint="convert the images to one mode (all grayscale or all colour)")
        if a.shape[1:] != first["shape"]:
            h, w = first["shape"]
            raise RemflowError(f"image sizes differ: this one is {a.shape[2]}x{a.shape[1]}, {first['file']} is "
                               f"{w}x{h}", key=str(f), hint="set data.resize: N to resize every image to N x N")
        if out is None:
            out = np.empty((len(files), *a.shape), dtype=np.uint8)
        out[i] = a
    return out


# ---------------------------------------------------------------- npz and plug-in readers


def read_npz(path: Path):
    if not path.is_file():
        raise RemflowError("data.root is a folder, not an npz file" if path.is_dir() else "npz file not found",
                           key="data.root", got=str(path),
                           hint=f"data.root must be an .npz file holding {', '.join(ARRAY_KEYS)}")
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle (or a lone .npy) and say so
        raise RemflowError("not a readable npz file: not a whole zip archive (truncated, or another format)",
                           key=str(path),
                           hint=f"save it with np.savez(path, {'=..., '.join(ARRAY_KEYS)}=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ARRAY_KEYS if k not in z.files]
            if missing:
                raise RemflowError(f"npz file lacks {', '.join(missing)}", key=str(path), got=sorted(z.files),
                                   hint=f"save it with np.savez(path, {'=..., '.join(ARRAY_KEYS)}=...)")
            arrays = {k: z[k] for k in ARRAY_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not a zip, truncated, or an object array
        raise RemflowError(f"not a readable npz file ({type(e).__name__}: {e})", key=str(path)) from None
    return check_arrays(arrays, str(path))


def read_plugin(ref: str, root: str | None, options: dict):
    from remflow.plugins import resolve

    fn = resolve(ref, "data.dataset")
    try:  # a signature that cannot take the call is the reader's definition, not a line of remflow's
        inspect.signature(fn).bind(root=root, **options)
    except TypeError as e:
        raise RemflowError(f"the plug-in reader cannot be called with data.root and data.options ({e})",
                           key="data.dataset", got=f"{ref}{inspect.signature(fn)}",
                           hint=f"define it as {ref.split(':')[1]}(root, **options) (or name each key of "
                                "data.options): docs/adding-a-dataset-or-model.md") from None
    except ValueError:  # a builtin without a signature: the call itself says
        pass
    try:
        got = fn(root=root, **options)
    except RemflowError:
        raise
    except Exception as e:  # the user's code: its own error, with where it happened, on one screen
        raise RemflowError(f"the plug-in reader raised {type(e).__name__}: {e}", key="data.dataset", got=ref,
                           hint=f"{_where(e)}; it is called as {ref.split(':')[1]}(root=data.root, **data.options)"
                           ) from None
    if isinstance(got, (tuple, list)) and len(got) == 4:
        got = dict(zip(ARRAY_KEYS, got))
    if not isinstance(got, dict):
        raise RemflowError(f"the plug-in reader returned {type(got).__name__}, not the arrays", key="data.dataset",
                           got=ref, hint=f"return a dict with {', '.join(ARRAY_KEYS)} (or a tuple in that order)")
    return check_arrays(got, f"{ref} (data.dataset)")


def _where(e: Exception) -> str:
    from remflow.errors import where_raised

    return "raised at " + where_raised(e)


def check_arrays(arrays: dict, where: str):
    """npz-style arrays -> (train_x NCHW uint8, train_y int64, test_x, test_y), every rule checked."""
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise RemflowError(f"{', '.join(missing)} missing", key=where, hint=f"provide {', '.join(ARRAY_KEYS)}")
    out = {}
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.dtype != np.uint8:
            raise RemflowError(f"x_{split} holds {x.dtype}, not uint8 images", key=f"{where}: x_{split}",
                               hint="store pixels as uint8 0..255 (np.uint8)")
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[3] in (1, 3, 4):
            x = np.transpose(x, (0, 3, 1, 2))
        else:
            raise RemflowError(f"x_{split} has shape {x.shape}: images must be N x H x W or N x H x W x C "
                               "(C = 1 or 3)", key=f"{where}: x_{split}")
        if x.shape[1] == 4:
            raise RemflowError(f"x_{split} has 4 channels", key=f"{where}: x_{split}",
                               hint="drop the alpha channel (x[..., :3])")
        if len(x) == 0:
            raise RemflowError(f"x_{split} holds no images", key=f"{where}: x_{split}")
        if x.shape[2] != x.shape[3]:
            raise RemflowError(f"x_{split}'s images are {x.shape[3]}x{x.shape[2]} (width x height), not square",
                               key=f"{where}: x_{split}", hint="pad or resize them to a square")
        if y.ndim != 1 or len(y) != len(x):
            raise RemflowError(f"y_{split} has shape {y.shape}; x_{split} holds {len(x)} images",
                               key=f"{where}: y_{split}", hint="one integer label per image")
        if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                       and np.all(np.mod(y, 1) == 0))):
            raise RemflowError(f"y_{split} holds {y.dtype}, not integer labels", key=f"{where}: y_{split}")
        out[split] = (np.ascontiguousarray(x), y.astype(np.int64))
    (train_x, train_y), (test_x, test_y) = out["train"], out["test"]
    if train_x.shape[1] != test_x.shape[1]:
        raise RemflowError(f"mixed channel counts: x_train has {train_x.shape[1]}, x_test {test_x.shape[1]}",
                           key=f"{where}: x_test")
    if train_x.shape[2:] != test_x.shape[2:]:
        raise RemflowError(f"x_train's images are {train_x.shape[2]}px, x_test's {test_x.shape[2]}px",
                           key=f"{where}: x_test", hint="one image size for both splits")
    k = int(train_y.max()) + 1
    for split, y in (("train", train_y), ("test", test_y)):
        bad = np.flatnonzero((y < 0) | (y >= k))
        if len(bad):
            raise RemflowError(f"label out of range: y_{split}[{bad[0]}] = {y[bad[0]]}, outside 0..{k - 1} (the "
                               "training labels' range)", key=f"{where}: y_{split}",
                               hint="labels are 0..K-1, every class with training images")
    present = np.unique(train_y)
    if len(present) < 2:
        raise RemflowError("a classifier needs at least two classes; y_train holds one", key=f"{where}: y_train",
                           got=int(train_y[0]))
    unseen = np.setdiff1d(np.unique(test_y), present)
    if len(unseen):
        raise RemflowError(f"y_test holds {_classes(unseen.tolist(), len(unseen))} that y_train lacks: the test "
                           "set has a class with no training image", key=f"{where}: y_test",
                           hint=f"labels are 0..K-1 (here K = {k}) with every class in the training set; drop "
                                "those test images or add training images of the class")
    if len(present) < k:  # labels that skip values or do not start at 0: classes with no image at all
        raise RemflowError(f"y_train holds {len(present)} distinct labels but its largest is {k - 1}: "
                           f"{_classes(_absent(present, k), k - len(present))} of 0..{k - 1} "
                           f"{'has' if k - len(present) == 1 else 'have'} no training image",
                           key=f"{where}: y_train",
                           hint="labels must be 0..K-1 with every class in the training set (renumber them, e.g. "
                                "np.unique(y_train, return_inverse=True)[1], mapping y_test the same way)")
    return train_x, train_y, test_x, test_y


def _absent(present: np.ndarray, k: int) -> list[int]:
    """The first few of 0..k-1 missing from the sorted distinct labels `present` (k may be huge: no range built)."""
    out: list[int] = []
    nxt = 0
    for v in present.tolist() + [k]:
        while nxt < v and len(out) < _FEW:
            out.append(nxt)
            nxt += 1
        if len(out) == _FEW:
            break
        nxt = v + 1
    return out


def _classes(shown: list[int], total: int) -> str:
    listed = ", ".join(str(c) for c in shown[:_FEW]) + (f", ... ({total} in all)" if total > _FEW else "")
    return f"class {listed}" if total == 1 else f"classes {listed}"

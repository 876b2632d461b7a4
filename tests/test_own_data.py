"""The user's own data and model: folder and npz datasets, plug-in readers and models, `remflow clean`."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import ROOT, THREADS, merge, root_params, write_yaml
from remflow import stages
from remflow.cli import app
from remflow.data.datasets import load_splits
from remflow.params import validate
from remflow.errors import RemflowError
from remflow.io import read_json
from remflow.params import DataCfg

# small runs of the whole path: 3 classes of digits, a 4-sample backdoor, a few epochs of a narrow CNN
SMALL = {
    "corruption": {"count": 4, "backdoor": {"patch": 2}},
    "model": {"name": "cnn", "width": 4},
    "pretrain": {"epochs": 2, "batch_size": 32, "eval_every": 1},
    "unlearn": {"epochs": 1, "batch_size": 32},
    "grid": {"regularities": ["high"], "discovery_rates": [1.0], "methods": ["none", "finetune"]},
    "methods": {"none": {}, "finetune": {}},
    "evaluate": {"taxonomy_run": None, "reference": None},
    "runtime": {"threads": THREADS},
}


def digits(classes: int = 3, per_class: int = 20, test_per_class: int = 6):
    """uint8 (N, 8, 8) images and labels of the first `classes` digits, split into train and test."""
    s = load_splits(DataCfg(dataset="digits", val_fraction=0.1, test_fraction=0.2))
    out = []
    for x, y, n in ((s.train_x, s.train_y, per_class), (s.test_x, s.test_y, test_per_class)):
        idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in range(classes)])
        out += [x[idx, 0], y[idx]]
    return out  # train_x, train_y, test_x, test_y


def write_folder(root: Path, mode: str = "L", classes: int = 3) -> Path:
    tx, ty, sx, sy = digits(classes)
    names = ["cat", "dog", "eel", "fox"][:classes]
    for split, xs, ys in (("train", tx, ty), ("test", sx, sy)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            d = root / split / names[y]
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(x, "L")
            (img.convert(mode) if mode != "L" else img).save(d / f"{i:04d}.png")
    return root


def write_npz(path: Path, rgb: bool = False, **replace) -> Path:
    tx, ty, sx, sy = digits()
    if rgb:
        tx, sx = np.repeat(tx[..., None], 3, axis=3), np.repeat(sx[..., None], 3, axis=3)
    arrays = {"x_train": tx, "y_train": ty, "x_test": sx, "y_test": sy, **replace}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def params_dict(over: dict) -> dict:
    d = merge(merge(root_params(), SMALL), over)
    if "name" in over.get("model", {}):  # another architecture: none of the small CNN's keys
        d["model"] = over["model"]
    return d


def params_file(tmp_path: Path, over: dict) -> Path:
    return write_yaml(tmp_path / "params.yaml", params_dict(over))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def check(params: Path):
    return invoke("check", "--params", str(params), "--dvc", str(ROOT / "dvc.yaml"))


def assert_refused(result, *needles: str):
    text = " ".join(result.output.split())  # rich wraps long paths inside the panel
    flat = text.replace("│", "").replace(" ", "")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 25, result.output
    for n in needles:
        assert n.replace(" ", "") in flat, f"{n!r} not in:\n{result.output}"


def pretrain_small(tmp_path: Path, over: dict) -> dict:
    """corrupt + pretrain a few steps on the dataset of `over`; returns the training log."""
    p = validate(params_dict(over))
    stages.corrupt(p, "high", 0, tmp_path / "m.json")
    return stages.pretrain(p, tmp_path / "m.json", tmp_path / "pre")


# ---------------------------------------------------------------- folder and npz


def test_folder_tree_loads_as_the_images_and_trains(tmp_path):
    root = write_folder(tmp_path / "tree")
    s = load_splits(DataCfg(dataset="folder", root=str(root), val_fraction=0.1))
    tx, ty, sx, sy = digits()
    assert s.num_classes == 3 and s.in_channels == 1 and s.image_size == 8
    assert len(s.train_y) + len(s.val_y) == len(ty) and len(s.test_y) == len(sy)
    # PNG is lossless: the reader's training set (sorted class, then file name) is the images written
    np.testing.assert_array_equal(s.train_x[:, 0], tx[s.train_source])
    np.testing.assert_array_equal(s.val_x[:, 0], tx[s.val_source])
    pixels = s.train_x.astype(np.float64) / 255
    assert s.mean[0] == pytest.approx(pixels.mean()) and s.std[0] == pytest.approx(pixels.std())
    assert s.fingerprint == load_splits(DataCfg(dataset="folder", root=str(root), val_fraction=0.1)).fingerprint

    log = pretrain_small(tmp_path, {"data": {"dataset": "folder", "root": str(root)}})
    assert log["steps"] > 0 and (tmp_path / "pre" / "model.safetensors").is_file()
    r = check(params_file(tmp_path, {"data": {"dataset": "folder", "root": str(root)}}))
    assert r.exit_code == 0 and "0: cat, 1: dog, 2: eel" in " ".join(r.output.split()), r.output


def test_npz_arrays_load_channels_last_and_train(tmp_path):
    path = write_npz(tmp_path / "d.npz", rgb=True)
    s = load_splits(DataCfg(dataset="npz", root=str(path), val_fraction=0.1))
    assert s.in_channels == 3 and s.image_size == 8 and s.num_classes == 3
    assert len(s.mean) == 3 and s.mean[0] == pytest.approx(s.mean[1])
    log = pretrain_small(tmp_path, {"data": {"dataset": "npz", "root": str(path)}})
    assert log["steps"] > 0


def test_folder_images_of_other_sizes_are_resized_when_asked(tmp_path):
    root = write_folder(tmp_path / "tree")
    odd = root / "train" / "dog" / "0025.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(odd)
    with pytest.raises(RemflowError) as e:
        load_splits(DataCfg(dataset="folder", root=str(root)))
    assert e.value.key == str(odd) and "data.resize" in e.value.hint
    s = load_splits(DataCfg(dataset="folder", root=str(root), resize=12))
    assert s.image_size == 12


def _empty_class(tmp: Path) -> tuple[dict, str]:
    root = write_folder(tmp / "tree")
    (root / "train" / "gnu").mkdir()
    return {"dataset": "folder", "root": str(root)}, str(root / "train" / "gnu")


def _one_class(tmp: Path) -> tuple[dict, str]:
    root = write_folder(tmp / "tree", classes=1)
    return {"dataset": "folder", "root": str(root)}, str(root / "train")


def _mixed_channels(tmp: Path) -> tuple[dict, str]:
    root = write_folder(tmp / "tree")
    odd = root / "train" / "eel" / "0050.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(odd)
    return {"dataset": "folder", "root": str(root)}, str(odd)


def _sizes_differ(tmp: Path) -> tuple[dict, str]:
    root = write_folder(tmp / "tree")
    odd = root / "test" / "cat" / "0001.png"
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(odd)
    return {"dataset": "folder", "root": str(root)}, str(odd)


def _label_out_of_range(tmp: Path) -> tuple[dict, str]:
    tx, ty, sx, sy = digits()
    sy = sy.copy()
    sy[3] = 7
    path = write_npz(tmp / "d.npz", y_test=sy)
    return {"dataset": "npz", "root": str(path)}, f"{path}: y_test"


def _npz_mixed_channels(tmp: Path) -> tuple[dict, str]:
    tx, ty, sx, sy = digits()
    path = write_npz(tmp / "d.npz", x_test=np.repeat(sx[..., None], 3, axis=3))
    return {"dataset": "npz", "root": str(path)}, f"{path}: x_test"


def _npz_missing_key(tmp: Path) -> tuple[dict, str]:
    path = write_npz(tmp / "d.npz", y_test=None)
    return {"dataset": "npz", "root": str(path)}, str(path)


def _npz_text(tmp: Path) -> tuple[dict, str]:
    (tmp / "d.npz").write_text("x_train,y_train\n1,2\n")  # a CSV saved under the wrong name
    return {"dataset": "npz", "root": str(tmp / "d.npz")}, str(tmp / "d.npz")


@pytest.mark.parametrize("case,needle", [
    (lambda t: ({"dataset": "folder", "root": str(t / "nowhere")}, str(t / "nowhere")), "dataset folder not found"),
    (lambda t: ({"dataset": "npz", "root": str(t / "none.npz")}, str(t / "none.npz")), "npz file not found"),
    (lambda t: ({"dataset": "folder", "root": str(write_npz(t / "d.npz"))}, str(t / "d.npz")),
     "the dataset folder is a file"),
    (lambda t: ({"dataset": "npz", "root": str(t)}, str(t)), "data.root is a folder, not an npz file"),
    (_empty_class, "empty class"),
    (_one_class, "at least two classes"),
    (_mixed_channels, "mixed channel counts"),
    (_sizes_differ, "image sizes differ"),
    (_label_out_of_range, "label out of range"),
    (_npz_mixed_channels, "mixed channel counts"),
    (_npz_missing_key, "lacks y_test"),
    (_npz_text, "not a whole zip archive"),
], ids=["missing-folder", "missing-npz", "folder-is-a-file", "npz-is-a-folder", "empty-class", "one-class", "mixed-channels", "sizes-differ",
        "label-out-of-range", "npz-mixed-channels", "npz-missing-key", "npz-text"])
def test_bad_own_data_exits_2_naming_the_path_and_writes_nothing(tmp_path, case, needle):
    data, path = case(tmp_path)
    params = params_file(tmp_path, {"data": data})
    assert_refused(check(params), needle, path)
    out = tmp_path / "m.json"
    assert_refused(invoke("corrupt", "--regularity", "high", "--seed", "0", "--out", str(out), "--params",
                          str(params)), needle)
    assert not out.exists()


@pytest.mark.parametrize("data,key", [
    ({"dataset": "folder"}, "data.root"),
    ({"dataset": "npz", "root": "x.npz", "resize": 8}, "data.resize"),
    ({"dataset": "imagenet"}, "data.dataset"),
    ({"dataset": "digits", "options": {"a": 1}}, "data.options"),
])
def test_own_data_keys_are_validated(tmp_path, data, key):
    assert_refused(check(params_file(tmp_path, {"data": data})), key)


# ---------------------------------------------------------------- plug-ins


def plugin_module(tmp_path: Path, monkeypatch, source: str) -> str:
    """Write a module under a fresh name on sys.path; returns its name."""
    name = f"own_{uuid.uuid4().hex[:10]}"
    (tmp_path / "plug").mkdir(exist_ok=True)
    (tmp_path / "plug" / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    return name


READER = """
import numpy as np

def load(root=None, classes=3):
    z = np.load(root)
    keep_tr, keep_te = z["y_train"] < classes, z["y_test"] < classes
    return {"x_train": z["x_train"][keep_tr], "y_train": z["y_train"][keep_tr],
            "x_test": z["x_test"][keep_te], "y_test": z["y_test"][keep_te]}

def broken(root=None):
    raise ValueError("cannot find the labels file")

def positional(path):
    return np.load(path)
"""

PLAIN_NET = """
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class ThreeScores(TinyNet):
    def __init__(self, in_channels, num_classes):
        super().__init__(in_channels, 3)


class Crashes(TinyNet):
    def forward(self, x):
        raise RuntimeError("shapes do not line up")
"""

# the worked example of docs/adding-a-dataset-or-model.md
WIDENABLE_NET = """
import torch
from remflow.models.layers import ConvBN, WidenableNet, WLinear

class TinyWideNet(WidenableNet):
    def __init__(self, in_channels, num_classes, width=8):
        super().__init__()
        self.group_widths = {"c1": width, "c2": 2 * width}
        self.conv1 = ConvBN(in_channels, width, 3, 1, 1, out_group="c1")
        self.conv2 = ConvBN(width, 2 * width, 3, 2, 1, in_group="c1", out_group="c2")
        self.fc = WLinear(2 * width, num_classes, bias=False, in_group="c2")

    def forward(self, x, route=None):
        x = self.conv2(self.conv1(x, route), route)
        return self.fc(torch.amax(x, dim=(2, 3)), route is not None)
"""


def run_cell(tmp_path: Path, over: dict, run: str) -> dict:
    """corrupt -> pretrain -> discover -> unlearn `run` on one small cell; returns the run record."""
    p = validate(params_dict(over))
    stages.corrupt(p, "high", 0, tmp_path / "m.json")
    stages.pretrain(p, tmp_path / "m.json", tmp_path / "pre")
    stages.discover(p, tmp_path / "m.json", tmp_path / "d.json", rate=1.0)
    return stages.unlearn(p, run, tmp_path / "pre" / "model.safetensors", tmp_path / "m.json", tmp_path / "d.json",
                          tmp_path / "run")


def test_plugin_reader_passes_check_and_runs_a_method(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)
    np.savez(tmp_path / "all.npz", x_train=x[:1200], y_train=d.target[:1200], x_test=x[1200:], y_test=d.target[1200:])
    mod = plugin_module(tmp_path, monkeypatch, READER)
    data = {"dataset": f"{mod}:load", "root": str(tmp_path / "all.npz"), "options": {"classes": 4}}
    r = check(params_file(tmp_path, {"data": data}))
    assert r.exit_code == 0, r.output
    assert load_splits(validate(params_dict({"data": data})).data).num_classes == 4
    record = run_cell(tmp_path, {"data": data}, "finetune")
    assert record["method"] == "finetune" and (tmp_path / "run" / "model.safetensors").is_file()

    assert_refused(check(params_file(tmp_path, {"data": {**data, "dataset": f"{mod}:broken", "options": {}}})),
                   "ValueError: cannot find the labels file", f"{mod}.py")
    assert_refused(check(params_file(tmp_path, {"data": {**data, "dataset": f"{mod}:positional", "options": {}}})),
                   "cannot be called with data.root", "positional(path)", "(root, **options)")
    assert_refused(check(params_file(tmp_path, {"data": {**data, "dataset": f"{mod}:nothing"}})),
                   "data.dataset", "'nothing'")
    assert_refused(check(params_file(tmp_path, {"data": {**data, "dataset": "no_such_pkg_x.data:load"}})),
                   "data.dataset", "cannot import")


def test_plain_module_plugin_runs_methods_without_expansion_and_check_refuses_rem(tmp_path, monkeypatch):
    mod = plugin_module(tmp_path, monkeypatch, PLAIN_NET)
    over = {"data": {"dataset": "digits"}, "model": {"name": f"{mod}:TinyNet", "options": {"hidden": 8}}}
    assert check(params_file(tmp_path, over)).exit_code == 0
    record = run_cell(tmp_path, over, "finetune")
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "run" / "model.safetensors"))
    assert keys == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "body.1.running_mean",
                    "body.1.running_var", "body.1.num_batches_tracked", "head.weight", "head.bias"}
    assert record["params_deployed"] == record["params_peak"]

    refused = {**over, "grid": {"methods": ["none", "rem"]}, "methods": {"rem": {}}}
    assert_refused(check(params_file(tmp_path, refused)), "grid.methods.1", "expansion")
    etd = {**over, "grid": {"pretrain_variants": ["standard", "etd"], "etd_methods": ["none"]}}
    assert_refused(check(params_file(tmp_path, etd)), "grid.etd_methods.0")
    assert_refused(check(params_file(tmp_path, {**over, "model": {"name": f"{mod}:torch"}})), "model.name",
                   "nn.Module subclass")
    # what pretraining would find out only after the corrupt, probe and discover stages: check finds it first
    assert_refused(check(params_file(tmp_path, {**over, "model": {"name": f"{mod}:ThreeScores"}})),
                   "one score per class", "(2, 3)")
    assert_refused(check(params_file(tmp_path, {**over, "model": {"name": f"{mod}:TinyNet",
                                                                   "options": {"hiddn": 8}}})), "model")
    assert_refused(check(params_file(tmp_path, {**over, "model": {"name": f"{mod}:Crashes"}})),
                   "fails on a batch", "RuntimeError")


def test_every_method_without_expansion_runs_on_a_plain_module(tmp_path, monkeypatch):
    """The claim of the docs: the methods that do not widen take any nn.Module."""
    from remflow.methods import REGISTRY, UnlearnContext
    from remflow.data.task import make_task
    from remflow.models import build_model

    mod = plugin_module(tmp_path, monkeypatch, PLAIN_NET)
    p = validate(params_dict({"data": {"dataset": "digits", "train_size": 300, "test_size": 100},
                              "model": {"name": f"{mod}:TinyNet"}}))
    splits = load_splits(p.data)
    task = make_task(p.data, splits, torch.device("cpu"), None, list(range(10)))
    plain = [n for n, m in REGISTRY.items() if not m.uses_expansion]
    assert "finetune" in plain and "rem" not in plain
    for name in plain:
        model = build_model(p.model, splits.in_channels, splits.num_classes, splits.image_size)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        out = REGISTRY[name].unlearn(UnlearnContext(model, task, p, 0, torch.device("cpu")), REGISTRY[name].config())
        assert out.state_dict().keys() == before.keys(), name


def test_widenable_plugin_runs_rem(tmp_path, monkeypatch):
    mod = plugin_module(tmp_path, monkeypatch, WIDENABLE_NET)
    over = {"data": {"dataset": "digits"}, "model": {"name": f"{mod}:TinyWideNet", "options": {"width": 4}},
            "grid": {"methods": ["none", "rem"]}, "methods": {"rem": {"epochs": 1}}}
    assert check(params_file(tmp_path, over)).exit_code == 0
    record = run_cell(tmp_path, over, "rem")
    assert record["method"] == "rem" and record["params_peak"] > record["params_deployed"]


# ---------------------------------------------------------------- remflow clean


def backdoored_npz(path: Path, count: int = 24, target: int = 0) -> tuple[Path, np.ndarray]:
    """All ten digits with a 2x2 white corner on `count` training images relabelled to `target`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)
    y = d.target.astype(np.int64)
    train_x, train_y, test_x, test_y = x[:700].copy(), y[:700].copy(), x[1400:], y[1400:]
    rng = np.random.default_rng(0)
    poisoned = np.sort(rng.choice(np.flatnonzero(train_y != target), count, replace=False))
    train_x[poisoned, -2:, -2:] = 255
    train_y[poisoned] = target
    np.savez(path, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
    return path, poisoned


def test_clean_lowers_forget_accuracy_of_a_backdoored_model_and_writes_the_record(tmp_path):
    from remflow.models import build_model
    from remflow.models.cnn import SmallCNN

    npz, poisoned = backdoored_npz(tmp_path / "poisoned.npz")
    over = {"data": {"dataset": "npz", "root": str(npz), "val_fraction": 0.1, "augment": {"crop_padding": 0}},
            "model": {"name": "cnn", "width": 8}, "unlearn": {"epochs": 3, "batch_size": 64}}
    params = params_file(tmp_path, over)
    p = validate(params_dict(over))
    # the user's own training, outside remflow: a plain state dict of the registered small CNN
    splits = load_splits(p.data)
    torch.manual_seed(0)
    net = build_model(p.model, splits.in_channels, splits.num_classes, splits.image_size)
    assert isinstance(net, SmallCNN)
    x = (torch.as_tensor(splits.train_x).float() / 255 - torch.tensor(splits.mean).view(1, -1, 1, 1)) / \
        torch.tensor(splits.std).view(1, -1, 1, 1)
    y = torch.as_tensor(splits.train_y)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        for b in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    (tmp_path / "flagged.txt").write_text("# flagged by a detector\n" + "\n".join(map(str, poisoned)) + "\n")

    out = tmp_path / "cleaned"
    r = invoke("clean", "--model", str(tmp_path / "mine.pt"), "--flagged", str(tmp_path / "flagged.txt"),
               "--out", str(out), "--method", "rem", "--params", str(params))
    assert r.exit_code == 0, r.output
    rec = read_json(out / "record.json", "record")
    print("clean rem:", json.dumps({k: rec[k] for k in ("before", "after", "unlearn_seconds")}))
    assert rec["method"] == "rem" and rec["config"]["method"] == "rem"
    assert rec["flagged"] == len(poisoned)
    assert rec["before"]["forget_acc"] >= 0.9  # the backdoor was learned
    assert rec["after"]["forget_acc"] <= rec["before"]["forget_acc"] - 0.3
    assert rec["after"]["utility"] >= rec["before"]["utility"] - 0.05
    assert "healed" in rec["not_measured"] and "D_c" in rec["not_measured"]
    # the cleaned model is the deployed architecture: it loads into the user's class as it is
    from safetensors.torch import load_file

    fresh = build_model(p.model, splits.in_channels, splits.num_classes, splits.image_size)
    fresh.load_state_dict(load_file(out / "model.safetensors"))


def test_clean_refuses_bad_input_and_writes_nothing(tmp_path):
    npz, poisoned = backdoored_npz(tmp_path / "p.npz", count=8)
    params = params_file(tmp_path, {"data": {"dataset": "npz", "root": str(npz)}, "model": {"width": 4}})
    torch.save({"not": "tensors"}, tmp_path / "bad.pt")
    (tmp_path / "flagged.txt").write_text("3\n99999\n")
    (tmp_path / "ok.txt").write_text("3\n")
    out = tmp_path / "cleaned"

    def clean(model, flagged, method="finetune"):
        return invoke("clean", "--model", str(model), "--flagged", str(flagged), "--out", str(out),
                      "--method", method, "--params", str(params))

    assert_refused(clean(tmp_path / "bad.pt", tmp_path / "ok.txt"), "not a state dict", str(tmp_path / "bad.pt"))
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    assert_refused(clean(tmp_path / "notes.pt", tmp_path / "ok.txt"), "not a PyTorch checkpoint")
    from remflow.models.cnn import SmallCNN

    torch.save(SmallCNN(1, 10, 8).state_dict(), tmp_path / "wide.pt")  # width 8, params say 4
    assert_refused(clean(tmp_path / "wide.pt", tmp_path / "ok.txt"), "does not fit params' `model`")
    torch.save(SmallCNN(1, 10, 4).state_dict(), tmp_path / "mine.pt")
    assert_refused(clean(tmp_path / "mine.pt", tmp_path / "flagged.txt"), "99999", f"{tmp_path / 'flagged.txt'}")
    assert_refused(clean(tmp_path / "mine.pt", tmp_path / "ok.txt", "rem_ideal"), "--method")
    assert_refused(clean(tmp_path / "mine.pt", tmp_path / "ok.txt", "nosuch"), "--method", "nosuch")
    assert not out.exists()
    # --out is replaced whole: a file, a folder of the user's, a folder holding an input are refused first
    (tmp_path / "notes.md").write_text("mine\n")
    for bad in (tmp_path / "notes.md", tmp_path, tmp_path / "mine.pt"):
        before = sorted(p.name for p in tmp_path.iterdir())
        r = invoke("clean", "--model", str(tmp_path / "mine.pt"), "--flagged", str(tmp_path / "ok.txt"),
                   "--out", str(bad), "--method", "finetune", "--params", str(params))
        assert_refused(r, "--out")
        assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "notes.md").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x\n")
    r = invoke("clean", "--model", str(tmp_path / "mine.pt"), "--flagged", str(tmp_path / "ok.txt"),
               "--out", str(tmp_path / "other"), "--method", "finetune", "--params", str(params))
    assert_refused(r, "--out", "keep.txt")
    assert (tmp_path / "other" / "keep.txt").is_file()


def test_clean_reads_a_remflow_discovery_file_in_the_splits_positions(tmp_path):
    """The pipeline's manifest and discovery files count in the split's training set, a user's list in the
    reader's: both name the same samples to clean, and a file made on other data is refused."""
    from remflow import stages
    from remflow.clean import place_flagged, read_flagged

    npz, poisoned = backdoored_npz(tmp_path / "p.npz", count=8)
    over = {"data": {"dataset": "npz", "root": str(npz), "val_fraction": 0.2}, "corruption": {"count": 20}}
    p = validate(params_dict(over))
    splits = load_splits(p.data)
    stages.corrupt(p, "low", 0, tmp_path / "m.json")
    stages.discover(p, tmp_path / "m.json", tmp_path / "d.json", rate=0.5)
    found = read_json(tmp_path / "d.json", "discovery")["indices"]
    forget, in_val = place_flagged(read_flagged(tmp_path / "d.json", p, splits), splits, "d.json")
    assert forget.tolist() == sorted(found) and len(in_val) == 0  # the very samples the pipeline would forget
    (tmp_path / "reader.txt").write_text("\n".join(str(splits.train_source[i]) for i in found) + "\n")
    assert read_flagged(tmp_path / "reader.txt", p, splits).tolist() == sorted(splits.train_source[found].tolist())
    other = load_splits(validate(params_dict({**over, "data": {**over["data"], "split_seed": 1}})).data)
    with pytest.raises(RemflowError, match="other data"):
        read_flagged(tmp_path / "d.json", p, other)
    (tmp_path / "huge.txt").write_text("99999999999999999999999\n")
    with pytest.raises(RemflowError, match="out of range"):
        read_flagged(tmp_path / "huge.txt", p, splits)
    (tmp_path / "bools.json").write_text("[1, true]")
    with pytest.raises(RemflowError, match="not a training index"):
        read_flagged(tmp_path / "bools.json", p, splits)


def test_clean_takes_image_paths_of_a_folder_dataset(tmp_path):
    from remflow.clean import read_flagged

    root = write_folder(tmp_path / "tree")
    p = validate(params_dict({"data": {"dataset": "folder", "root": str(root), "val_fraction": 0.1}}))
    splits = load_splits(p.data)
    (tmp_path / "f.txt").write_text("cat/0001.png\n" + str(root / "dog" / "x") + "\n")
    with pytest.raises(RemflowError) as e:
        read_flagged(tmp_path / "f.txt", p, splits)
    assert e.value.key == f"{tmp_path / 'f.txt'}:2"
    (tmp_path / "f.txt").write_text(f"cat/0001.png\n{root / 'train' / 'dog' / '0021.png'}\n0042.png\n")
    # sorted class, then file name: cat holds files 0000-0019, dog 0020-0039, eel 0040-0059
    assert read_flagged(tmp_path / "f.txt", p, splits).tolist() == [1, 21, 42]


# ---------------------------------------------------------------- user data: what used to pass silently


def tiny_tree(root: Path, counts: dict[str, int], size: int = 4, seed: int = 0, test: int = 1) -> Path:
    """`counts[c]` random size x size grayscale PNGs under train/c (and `test` under test/c)."""
    rng = np.random.default_rng(seed)
    for split, per in (("train", None), ("test", test)):
        for c, n in counts.items():
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n if per is None else per):
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(d / f"{i:03d}.png")
    return root


def folder_cfg(root: Path, **kw) -> DataCfg:
    return DataCfg(dataset="folder", root=str(root), **kw)


def test_16_bit_grayscale_is_scaled_to_8_bits_and_wider_modes_are_refused(tmp_path):
    from remflow.data.custom import read_folder

    root = write_folder(tmp_path / "tree")
    tx, ty, sx, sy = digits()
    for f in sorted((root / "train").rglob("*.png")) + sorted((root / "test").rglob("*.png")):
        x = np.asarray(Image.open(f))
        Image.fromarray(x.astype(np.uint16) * 257).save(f)  # the same image, 16 bits deep
    odd = root / "train" / "cat" / "0000.png"
    wide = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1031  # values between the multiples of 257
    Image.fromarray(wide).save(odd)
    assert Image.open(odd).mode == "I;16"
    train_x, train_y, test_x, _ = read_folder(root)
    assert train_x[0, 0].tolist() == np.round(wide / 257).astype(np.uint8).tolist()
    np.testing.assert_array_equal(train_x[1:, 0], tx[1:])  # x * 257 -> x exactly, not clipped at 255
    np.testing.assert_array_equal(test_x[:, 0], sx)

    for dtype, mode in ((np.int32, "I"), (np.float32, "F")):
        bad = root / "test" / "dog" / "0009.tif"
        Image.fromarray(np.zeros((8, 8), dtype)).save(bad)
        assert Image.open(bad).mode == mode
        assert_refused(check(params_file(tmp_path, {"data": {"dataset": "folder", "root": str(root)}})),
                       f"image mode {mode}", "no defined value range", str(bad))


def _npz_labels(tmp: Path, shift: int = 0, scale: int = 1) -> Path:
    tx, ty, sx, sy = digits()
    return write_npz(tmp / "d.npz", y_train=ty * scale + shift, y_test=sy * scale + shift)


@pytest.mark.parametrize("shift,scale,needle", [
    (1, 1, "class 0 of 0..3 has no training image"),
    (0, 1_000_000, "classes 1, 2, 3, 4, 5, ... (1999998 in all) of 0..2000000"),
], ids=["labels-from-1", "labels-times-a-million"])
def test_labels_that_skip_classes_are_refused(tmp_path, monkeypatch, shift, scale, needle):
    path = _npz_labels(tmp_path, shift, scale)
    params = params_file(tmp_path, {"data": {"dataset": "npz", "root": str(path)}})
    assert_refused(check(params), needle, f"{path}: y_train", "labels must be 0..K-1")
    # a plug-in reader's labels are held to the same rule
    mod = plugin_module(tmp_path, monkeypatch, READER)
    data = {"dataset": f"{mod}:load", "root": str(path), "options": {"classes": 10 ** 9}}
    assert_refused(check(params_file(tmp_path, {"data": data})), needle, f"{mod}:load")


def test_a_test_class_the_training_set_lacks_is_refused_naming_the_set(tmp_path):
    tx, ty, sx, sy = digits(classes=4)
    keep = ty != 1
    path = write_npz(tmp_path / "d.npz", x_train=tx[keep], y_train=ty[keep], x_test=sx, y_test=sy)
    assert set(ty[keep]) == {0, 2, 3} and set(sy) == {0, 1, 2, 3}
    assert_refused(check(params_file(tmp_path, {"data": {"dataset": "npz", "root": str(path)}})),
                   "y_test holds class 1 that y_train lacks", f"{path}: y_test")


def test_a_class_that_vanishes_into_the_validation_split_is_refused(tmp_path):
    from remflow.data.datasets import _holdout

    root = tiny_tree(tmp_path / "tree", {"ant": 12, "bee": 12, "cow": 1})
    n = 25  # the lone 'cow' image is the reader's last training image: find seeds that put it in val or not
    in_val = [s for s in range(50) if n - 1 in _holdout(np.arange(n), np.arange(n), 0.1, s)[0]]
    kept = next(s for s in range(50) if s not in in_val)
    s = load_splits(folder_cfg(root, val_fraction=0.1, split_seed=kept))
    assert s.num_classes == 3 and 2 in s.train_y
    over = {"data": {"dataset": "folder", "root": str(root), "val_fraction": 0.1, "split_seed": in_val[0]}}
    assert_refused(check(params_file(tmp_path, over)), "class 2 ('cow') has 1 training image(s)", "none is left",
                   "data.val_fraction", "data.split_seed", "add more images of class 2")


def test_user_data_fingerprint_covers_every_training_image(tmp_path):
    from remflow.data.corruption import load_manifest

    root = tiny_tree(tmp_path / "tree", {"ant": 50, "bee": 50, "cow": 50})
    over = {"data": {"dataset": "folder", "root": str(root), "val_fraction": 0.1}, "corruption": {"count": 4}}
    p = validate(params_dict(over))
    before = load_splits(p.data)
    assert len(before.train_y) // 64 == 2  # the sampled hash would read every other image only
    stages.corrupt(p, "low", 0, tmp_path / "m.json")
    # overwrite the second image of the training split: one the sampled hash skips
    files = sorted((root / "train").rglob("*.png"))
    f = files[before.train_source[1]]
    Image.fromarray(255 - np.asarray(Image.open(f)), "L").save(f)
    after = load_splits(p.data)
    assert after.fingerprint != before.fingerprint
    with pytest.raises(RemflowError, match="other data"):
        load_manifest(tmp_path / "m.json", after)


def _write_rgb(path: Path, x: np.ndarray) -> None:
    img = Image.fromarray(x, "RGB")
    if path.suffix.lower() == ".gif":
        img = img.quantize(colors=8)  # the image's few colours, exactly
    img.save(path, **({"lossless": True} if path.suffix == ".webp" else {}))


def test_folder_reads_every_still_image_format_pillow_reads(tmp_path):
    from remflow.data.custom import folder_files, read_folder

    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    root = tmp_path / "tree"
    written = {}
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i, ext in enumerate((".png", ".BMP", ".gif", ".tif", ".TIFF", ".webp")):
                x = palette[rng.integers(0, 4, (6, 6))]
                written[root / split / c / f"{i}{ext}"] = x
                _write_rgb(root / split / c / f"{i}{ext}", x)
    train_x, train_y, test_x, test_y = read_folder(root)
    assert len(train_y) == len(test_y) == 12
    files, _ = folder_files(root, "train")
    for f, x in zip(files, train_x):
        np.testing.assert_array_equal(np.transpose(x, (1, 2, 0)), written[f], err_msg=str(f))


def _nested(root: Path) -> Path:
    (root / "train" / "bee" / "more").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(root / "train" / "bee" / "more" / "x.png")
    return root / "train" / "bee" / "more"


def _loose(root: Path) -> Path:
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(root / "train" / "stray.png")
    return root / "train" / "stray.png"


def _not_image(root: Path) -> Path:
    (root / "test" / "ant" / "labels.csv").write_text("a,b\n")
    return root / "test" / "ant" / "labels.csv"


@pytest.mark.parametrize("make,shown", [(_nested, "bee/more/"), (_loose, "stray.png"),
                                        (_not_image, "ant/labels.csv")], ids=["nested", "loose", "not-image"])
def test_files_the_folder_reader_would_skip_are_refused_and_hidden_ones_skipped(tmp_path, make, shown):
    root = tiny_tree(tmp_path / "tree", {"ant": 3, "bee": 3})
    clean = load_splits(folder_cfg(root, val_fraction=0.2))
    # hidden files and folders stay out without a word: a Finder's .DS_Store, AppleDouble ._ files, a .git
    (root / "train" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "ant" / "._000.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "train" / "bee" / ".cache").mkdir()
    (root / "train" / "bee" / ".cache" / "x.png").write_bytes(b"junk")
    again = load_splits(folder_cfg(root, val_fraction=0.2))
    np.testing.assert_array_equal(again.train_x, clean.train_x)

    bad = make(root)
    assert_refused(check(params_file(tmp_path, {"data": {"dataset": "folder", "root": str(root)}})),
                   "not images of a class", shown, str(bad))


def test_exif_orientation_is_applied(tmp_path):
    from remflow.data.custom import folder_files, read_folder

    root = tiny_tree(tmp_path / "tree", {"ant": 2, "bee": 2}, size=8)
    phone = root / "train" / "bee" / "photo.jpg"
    x = np.zeros((8, 8), np.uint8)
    x[:2, :] = 255  # a bright top edge: rotated a quarter turn clockwise it is the right edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    Image.fromarray(x, "L").save(phone, exif=exif, quality=100)
    stored = np.asarray(Image.open(phone).convert("L"))
    train_x, *_ = read_folder(root)
    got = train_x[folder_files(root, "train")[0].index(phone), 0]
    np.testing.assert_array_equal(got, np.rot90(stored, -1))
    assert got[:, -2:].mean() > 200 and got[:, :2].mean() < 50


def test_class_names_gives_the_label_of_each_class_folder_sorted_as_strings(tmp_path):
    from remflow.data.custom import class_names

    root = tmp_path / "tree"
    for split in ("train", "test"):
        for c, v in (("2", 0), ("10", 255)):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((4, 4), v, np.uint8), "L").save(root / split / c / f"{i}.png")
    cfg = folder_cfg(root, val_fraction=0.2)
    assert class_names(cfg) == ["10", "2"]  # label 0 is '10': string order, not numeric
    s = load_splits(cfg)
    assert set(s.train_x[s.train_y == 0].ravel()) == {255} and set(s.train_x[s.train_y == 1].ravel()) == {0}
    assert class_names(DataCfg(dataset="digits")) is None

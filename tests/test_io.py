"""Atomic writes and safe checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from remflow.errors import RemflowError
from remflow.io import atomic_dir, atomic_write_text, load_checkpoint, save_checkpoint


def test_atomic_write_replaces_or_leaves_nothing(tmp_path):
    p = tmp_path / "a" / "x.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["x.txt"]


def test_atomic_dir_is_all_or_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "model.bin").write_text("half")
            raise RuntimeError("interrupted")
    assert not out.exists() and os.listdir(tmp_path) == []
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(out)) == ["b"] and os.listdir(tmp_path) == ["run"]


def test_checkpoint_roundtrip_and_bad_files(tmp_path):
    p = tmp_path / "m.safetensors"
    save_checkpoint(p, {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}, {"hello": [1, 2]})
    tensors, meta = load_checkpoint(p)
    assert torch.equal(tensors["w"], torch.arange(6.0).view(2, 3)) and meta == {"hello": [1, 2]}

    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(RemflowError, match="truncated") as e:
        load_checkpoint(truncated)
    assert e.value.key == str(truncated)

    foreign = tmp_path / "f.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(RemflowError, match="not a remflow checkpoint"):
        load_checkpoint(foreign)

    pickled = tmp_path / "p.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(RemflowError):
        load_checkpoint(pickled)
    with pytest.raises(RemflowError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_bytes_are_deterministic(tmp_path):
    t = {"b": torch.ones(3), "a": torch.zeros(2, 2)}
    save_checkpoint(tmp_path / "1", t, {"x": 1})
    save_checkpoint(tmp_path / "2", dict(reversed(list(t.items()))), {"x": 1})
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    for i in range(3, 6):  # metadata order must not depend on the process (hash seeds)
        subprocess.run([sys.executable, "-c", "import torch; from remflow.io import save_checkpoint; "
                        f"save_checkpoint({str(tmp_path / str(i))!r}, {{'a': torch.zeros(2)}}, {{'x': 1, 'y': 2}})"],
                       check=True)
    assert len({(tmp_path / str(i)).read_bytes() for i in range(3, 6)}) == 1

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


def _killed_mid_write(target) -> None:
    """A process that dies (SIGKILL) inside atomic_dir after writing its record, before the rename."""
    code = ("import sys, time; from remflow.io import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'record.json').write_text('{}'); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()


def test_a_killed_writers_temporaries_are_swept_and_a_live_ones_kept(tmp_path):
    from remflow.io import _host

    out = tmp_path / "runs" / "rem-high-0.1-0"
    _killed_mid_write(out)
    orphans = [p.name for p in out.parent.iterdir()]
    assert len(orphans) == 1 and orphans[0].startswith(f".rem-high-0.1-0.{_host()}.") and orphans[0].endswith(".tmp")
    keep = [
        f".rem-high-0.1-0.{_host()}.{os.getppid()}-abcdefgh.tmp",  # a process that is alive: its write goes on
        f".rem-high-0.1-0.0badc0de.999999999-abcdefgh.tmp",  # another host's: its pid means nothing here
        f".rem-high-0.1-00.{_host()}.999999999-abcdefgh.tmp",  # another output's name
        f".rem-high-0.1-0.99990-b.{_host()}.999999999-abcdefgh.tmp",  # output `rem-high-0.1-0.99990-b`'s
        ".rem-high-0.1-0.12345-notours.tmp",  # not a name remflow writes
        f".rem-high-0.1-0.{_host()}.99999999999999999999999-abcdefgh.tmp",  # no pid at all
    ]
    for name in keep:
        (out.parent / name).mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "record.json").write_text("{}")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([*keep, out.name])
    # files too: a killed atomic_write_* leaves `.<name>.<host>.<pid>-*.tmp`, the next write of that name removes it
    f = tmp_path / "m.json"
    orphan = tmp_path / f".m.json.{_host()}.999999999-abcdefgh.tmp"
    orphan.write_text("half")
    atomic_write_text(f, "{}")
    assert not orphan.exists() and f.read_text() == "{}"


def test_evaluate_never_reads_a_killed_stages_temporary_record(tmp_path):
    """A run folder's temporary (its stage killed before the rename) holds a record of the cell: evaluate must
    call the cell missing, not read the half-made run."""
    from remflow.evaluate import _collect

    runs = tmp_path / "runs"
    _killed_mid_write(runs / "rem-high-0.1-0")
    (tmp := next(runs.iterdir()) / "record.json").write_text('{"cell": "rem"}')
    assert tmp.is_file()
    with pytest.raises(RemflowError, match="1 of 1 runs are missing"):
        _collect(runs, [("rem",)], lambda rec, _: (rec["cell"],), lambda c: "runs are missing")


def test_a_cell_held_by_two_run_folders_is_refused_not_picked(tmp_path):
    """A rate written 1.0 and then 1 names another stage: its old folder stays, and holds the same cell. Evaluate
    must not pick one of the two by file-name order (it picked the stale one)."""
    import json

    from remflow.evaluate import _collect

    runs = tmp_path / "runs"
    for name, score in (("rem-low-1-0", 0.93), ("rem-low-1.0-0", 0.95)):
        (runs / name).mkdir(parents=True)
        (runs / name / "record.json").write_text(json.dumps({"cell": "rem-low-1", "score": score}))
    with pytest.raises(RemflowError, match="two run folders hold the same cell: rem-low-1-0 and rem-low-1.0-0"):
        _collect(runs, [("rem-low-1",)], lambda rec, _: (rec["cell"],), lambda c: "runs are missing")
    # a folder of a cell the grid no longer has is ignored, as before
    assert _collect(runs, [], lambda rec, _: (rec["cell"],), lambda c: "runs are missing") == []


def test_a_cell_held_by_two_run_folders_takes_the_folder_the_grid_writes_now(tmp_path, capsys):
    """Rates written 1.0 and then 1: the grid's stage now writes rem-low-1-0, the old rem-low-1.0-0 stays. With the
    rates as written, evaluate takes the folder the grid writes now, whichever sorts first, and notes the other."""
    import json

    from remflow.evaluate import _collect, spelled

    runs = tmp_path / "runs"
    for name, score in (("rem-low-1-0", 0.93), ("rem-low-1.0-0", 0.95), ("rem-low-0.5-0", 0.5)):
        (runs / name).mkdir(parents=True)
        (runs / name / "record.json").write_text(json.dumps({"cell": ["rem", "low", 1.0 if "-1" in name else 0.5],
                                                             "score": score}))
    key = lambda rec, _: tuple(rec["cell"])  # noqa: E731
    cells = [("rem", "low", 0.5), ("rem", "low", 1.0)]
    for written, score in (([0.5, 1], 0.93), ([0.5, 1.0], 0.95)):
        rates = spelled([0.5, 1.0], written)
        got = _collect(runs, cells, key, lambda c: "missing", lambda c: f"{c[0]}-{c[1]}-{rates[c[2]]}-0")
        assert [rec["score"] for rec, _ in got] == [0.5, score]
        assert "1 run folder of the grid's cells under a rate written otherwise" in capsys.readouterr().err
    # neither folder is the grid's: refused, as without the spelling
    with pytest.raises(RemflowError, match="two run folders hold the same cell"):
        _collect(runs, cells, key, lambda c: "missing", lambda c: "rem-low-1.00-0")

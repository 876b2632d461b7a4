"""Atomic writes and safe checkpoint loading.

Every artifact goes to a temporary file next to its destination and is renamed into place, so an
interrupted stage never leaves a half-written output. Checkpoints are safetensors files: loading them
never executes code, and a truncated or foreign file gives a RemflowError instead of a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from remflow.errors import RemflowError

CHECKPOINT_FORMAT = "remflow-checkpoint/1"
_UMASK = os.umask(0o022)  # read once, in the importing (main) thread: the temp files get the modes open() would
os.umask(_UMASK)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError, ValueError):  # another user's, or not a pid: assume alive
        return True
    return True


@functools.cache
def _host() -> str:
    """This host, as 8 hex digits: a process id means something only on the host that issued it (a project
    folder may be shared by a cluster's nodes)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    """`.<name>.<host>.<pid>-`: a temporary sibling names the host and process that write it, so a later writer
    on the same host can tell an orphan (its process killed mid-write) from a write in progress."""
    return f".{path.name}.{_host()}.{os.getpid()}-"


# what follows `.<name>.` in a temporary of _temp_prefix's, as mkstemp / mkdtemp complete it (8 random characters)
_TEMP_REST = re.compile(r"([0-9a-f]{8})\.([0-9]{1,10})-[a-z0-9_]{8}\.(tmp|old)")


def sweep_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of `path` that a killed writer on this host left
    (`.<name>.<host>.<pid>-<random>.tmp` / `.old` whose process is gone); return them. Another host's, a live
    process's and any other name's (another output's, another tool's) are kept."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
            m = _TEMP_REST.fullmatch(p.name[len(path.name) + 2:])
            if m is None or m.group(1) != _host():
                continue
            pid = int(m.group(2))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError, AttributeError):  # a mount without modes, or no fchmod: as it is
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would outlive the rename
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RemflowError(f"{what} not found", key=str(path), hint="run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RemflowError(f"{what} is not valid JSON ({e})", key=str(path),
                           hint="the file is corrupted or truncated; delete it and rerun its stage") from None


def file_digest(path: str | os.PathLike) -> str:
    """Short content hash: run records pin the manifest and discovered set they were made from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        with contextlib.suppress(OSError):
            tmp.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would outlive the rename
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write a safetensors checkpoint whose metadata carries the config that made it."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # one metadata entry: safetensors stores metadata in a hash map, so several keys come out in random order
    header = {"remflow": json.dumps({"format": CHECKPOINT_FORMAT, "meta": meta}, sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=header))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read tensors and metadata; never executes code from the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise RemflowError("checkpoint not found", key=str(path), hint="run the stage that writes it first (dvc repro)")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header = json.loads(_safetensors_metadata(data).get("remflow", "{}"))
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as e:
        raise RemflowError(f"checkpoint is truncated or not a safetensors file ({e})", key=str(path),
                           hint="delete it and rerun the stage that writes it") from None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT or "meta" not in header:
        raise RemflowError("not a remflow checkpoint (no remflow metadata in its header)", key=str(path),
                           got=header.get("format") if isinstance(header, dict) else None)
    return tensors, header["meta"]


def _safetensors_metadata(data: bytes) -> dict:
    import struct

    if len(data) < 8:
        raise ValueError("file shorter than the safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("header length beyond end of file")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}

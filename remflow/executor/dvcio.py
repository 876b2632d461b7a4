"""DVC's own records, written the way `dvc repro` writes them, at a cost that does not grow with the suite.

DVC rewrites dvc.lock by parsing the whole file with ruamel's round-trip parser and dumping it again, once
per stage (8.6 s a rewrite on a 1 MB lock here; a 2000-stage lock is several MB). remflow run keeps the
lock as text blocks, one per stage, and replaces the blocks of the committed stages with DVC's own
serialisation of each (`dvc.stage.serialize.to_lockfile`, dumped by DVC's YAML dumper under `stages:`, so
the bytes are the ones DVC would write), then writes the whole file to a temporary name and renames it over
dvc.lock: a coordinator killed mid-write leaves the previous lock whole.

DVC also reads params.yaml again for every params dependency it hashes (its pure-Python YAML parser, tens
of ms a read, several reads a stage). `cached_param_reads` memoises those reads for as long as the file's
size and mtime stay the same, so a params.yaml edited during a run is still read afresh.
"""

from __future__ import annotations

import copy
import os
import tempfile
from contextlib import contextmanager


class LockText:
    """dvc.lock as an ordered set of per-stage text blocks (the header and anything after `stages:` kept)."""

    HEADER = "schema: '2.0'\n"

    def __init__(self, path: str, order: list[str] | None = None):
        """`order`: stage names in the order `dvc repro` would run them; stages new to the lock are written
        in that order (as a serial repro appends them), whatever order they finished in."""
        self.path = path
        self.rank = {name: i for i, name in enumerate(order or [])}
        self.head: list[str] = [self.HEADER]
        self.blocks: dict[str, str] = {}  # the stage's key line -> its whole block, in file order
        self.tail: list[str] = []  # top-level keys after `stages:` (DVC datasets), kept as they are
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self._split(f.read())
        self._known = set(self.blocks)  # the stages the file had before this run keep their places
        self._names: dict[str, str] = {}  # key line of a stage new to the file -> its name

    def _split(self, text: str) -> None:
        lines = text.splitlines(keepends=True)
        try:
            at = next(i for i, line in enumerate(lines) if line.rstrip() in ("stages:", "stages: {}"))
        except StopIteration:  # no stages yet (or an empty file)
            self.head = lines or [self.HEADER]
            return
        self.head = lines[:at]
        key, block = None, []
        for j, line in enumerate(lines[at + 1:], start=at + 1):
            if line.startswith("  ") and not line.startswith("   "):
                if key is not None:
                    self.blocks[key] = "".join(block)
                key, block = line, [line]
            elif line[:1] not in (" ", "\n", ""):  # a top-level key after the stages
                self.tail = lines[j:]
                break
            else:
                block.append(line)
        if key is not None:
            self.blocks[key] = "".join(block)

    def update(self, stages) -> None:
        """Replace (or append, in order) the block of each stage with DVC's serialisation of it."""
        from dvc.stage.serialize import to_lockfile
        from dvc.utils.serialize._yaml import dumps_yaml

        for stage in stages:
            text = dumps_yaml({"stages": to_lockfile(stage)})
            body = text.split("\n", 1)[1]  # drop "stages:\n": the block keeps the document's indentation
            key = body.split("\n", 1)[0] + "\n"
            self.blocks[key] = body
            if key not in self._known:
                self._names[key] = stage.name

    def text(self) -> str:
        if not self.blocks:
            return "".join(self.head) + "stages: {}\n" + "".join(self.tail)
        old = [b for k, b in self.blocks.items() if k in self._known]
        new = sorted((k for k in self.blocks if k not in self._known),
                     key=lambda k: self.rank.get(self._names.get(k, ""), len(self.rank)))
        body = "".join(old) + "".join(self.blocks[k] for k in new)
        return "".join(self.head) + "stages:\n" + body + "".join(self.tail)

    def write(self) -> None:
        """Write atomically: a temporary file in the same folder, flushed, then renamed over dvc.lock."""
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".dvc.lock.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.text())
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(self.path):
                os.chmod(tmp, os.stat(self.path).st_mode & 0o777)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


@contextmanager
def cached_param_reads():
    """Memoise DVC's params-file reads for the duration (keyed by path, size and mtime)."""
    try:
        import dvc.dependency.param as param
    except ImportError:  # pragma: no cover - DVC without this module: nothing to speed up
        yield
        return
    original = getattr(param, "load_path", None)
    if original is None:  # pragma: no cover - a DVC that reads params otherwise
        yield
        return
    memo: dict = {}

    def load_path(fs_path, fs, **kwargs):
        try:
            info = fs.info(fs_path)
            key = (fs_path, id(fs), info.get("size"), info.get("mtime"), tuple(sorted(kwargs.items())))
        except Exception:  # noqa: BLE001  cannot stat it: read it as DVC would
            return original(fs_path, fs, **kwargs)
        if key not in memo:
            memo[key] = original(fs_path, fs, **kwargs)
        return copy.deepcopy(memo[key])

    param.load_path = load_path
    try:
        yield
    finally:
        param.load_path = original

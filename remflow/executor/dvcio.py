"""DVC's own records, written the way `dvc repro` writes them, at a cost that does not grow with the suite.

DVC rewrites dvc.lock by parsing the whole file with ruamel's round-trip parser and dumping it again, once
per stage (8.6 s a rewrite on a 1 MB lock here; a 2000-stage lock is several MB). remflow run keeps the
lock as text blocks, one per stage, and replaces the blocks of the committed stages with DVC's own
serialisation of each (`dvc.stage.serialize.to_lockfile`, dumped by DVC's YAML dumper under `stages:`, so
the bytes are the ones DVC would write), then writes the whole file to a temporary name and renames it over
dvc.lock: a coordinator killed mid-write leaves the previous lock whole.

DVC can write a batch of stages itself (`ProjectFile.dump_stages(stages, update_pipeline=False)`, what `dvc
commit` calls), but each call still parses and dumps the whole lock: at the 2000-stage grid that is far slower
than LockText (`python bench/lock_writes.py`, docs/benchmarks.md). LockText uses DVC's public pieces only:
`dvc.stage.serialize.to_lockfile` and `dvc.utils.serialize.dumps_yaml`; the header of a new lock file is checked
against DVC's own lock schema before it is written (pyproject pins DVC below 4, the next schema change).

DVC also reads params.yaml again for every params dependency it hashes (a YAML parse, a few reads a stage).
`cached_param_reads` memoises the parse by the file's content: every read still reads the bytes, and a parse
is reused only for the same bytes, so an edit during a run is always seen (whatever its size or mtime).
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from contextlib import contextmanager


def lock_path(dvcfile) -> str:
    """The lock file of a dvc.yaml (DVC's rule: `<name>.yaml` is locked by `<name>.lock` beside it)."""
    return os.path.splitext(dvcfile.path)[0] + ".lock"


def _check_header(head: str, path: str) -> None:
    """A new lock file's header must be one DVC reads: validated with DVC's own lock schema."""
    from dvc.dvcfile import Lockfile
    from dvc.utils.serialize import loads_yaml

    Lockfile.validate({**(loads_yaml(head) or {}), "stages": {}}, fname=path)


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
        else:
            _check_header(self.HEADER, path)
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
            if self._starts_block(line):
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
        from dvc.utils.serialize import dumps_yaml

        entries: dict = {}
        names = []
        for stage in stages:
            entry = to_lockfile(stage)
            entries.update(entry)
            names.extend(entry)
        if not entries:
            return
        # one dump for the batch (a YAML dumper is set up per call), cut into one block per stage
        text = dumps_yaml({"stages": entries})
        lines = text.splitlines(keepends=True)[1:]  # drop "stages:": the blocks keep the document's indentation
        starts = [i for i, line in enumerate(lines) if self._starts_block(line)]
        if len(starts) != len(names):  # pragma: no cover - a layout the cut does not know: one dump per stage
            blocks = [dumps_yaml({"stages": {n: entries[n]}}).split("\n", 1)[1] for n in names]
        else:
            blocks = ["".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]
        for name, body in zip(names, blocks):
            key = body.split("\n", 1)[0] + "\n"
            self.blocks[key] = body
            if key not in self._known:
                self._names[key] = name

    @staticmethod
    def _starts_block(line: str) -> bool:
        """A stage's key line under `stages:` (two spaces of indentation, not a complex key's value line)."""
        return line.startswith("  ") and not line.startswith("   ") and not line.startswith("  :")

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
    """Memoise the parse of DVC's params-file reads for the duration, keyed by the bytes read.

    Each read still reads the file (a few KB); only the parse is reused, and only for identical bytes, so what
    DVC records is always the file's content at that read. Reads DVC makes with extra arguments, of files that
    cannot be read or decoded, are left to DVC (its own errors)."""
    try:
        import dvc.dependency.param as param
        from dvc.utils.serialize import PARSERS
    except ImportError:  # pragma: no cover - DVC without this module: nothing to speed up
        yield
        return
    original = getattr(param, "load_path", None)
    if original is None:  # pragma: no cover - a DVC that reads params otherwise
        yield
        return
    memo: dict = {}

    def load_path(fs_path, fs, **kwargs):
        if kwargs:
            return original(fs_path, fs, **kwargs)
        try:
            with fs.open(fs_path, "rb") as f:
                data = f.read()
            text = data.decode("utf-8")
        except Exception:  # noqa: BLE001  missing, unreadable, not UTF-8: DVC reads it and reports it
            return original(fs_path, fs)
        key = (fs_path, fs.suffix(fs_path).lower(), hashlib.blake2b(data, digest_size=16).digest())
        if key not in memo:
            memo[key] = PARSERS[key[1]](text, fs_path)
        return copy.deepcopy(memo[key])

    param.load_path = load_path
    try:
        yield
    finally:
        param.load_path = original

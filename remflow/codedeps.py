"""Per-run code fingerprints: the `check` stage writes, for every entry of `methods:`, what its code is.

An unlearn cell runs one entry of `methods:`. The method modules it executes are the module that registers
the entry's method, the method modules that module imports (transitively) and methods/base.py. dvc.yaml's
unlearn cells come from a matrix over `grid.methods` (so `dvc exp run -S grid...` and edits of params.yaml
keep working) and DVC cannot look a run's files up from inside a matrix, so the pipeline's first stage,
`check` (`remflow check --record artifacts/code`), writes `artifacts/code/<run>.json` with a hash of each of
those files, and a cell depends on `artifacts/code/${item.method}.json`:

- editing scrub.py changes scrub.json only, so only the scrub cells run again;
- a new entry under `methods:` gets its file from the same `dvc repro` that runs its cells (nothing to sync,
  no links to keep);
- a file's hash leaves its docstrings out, so a docstring edit re-runs
  nothing; any other edit, a comment included, counts.

The stage depends on params.yaml and on the methods folder, so it runs when either changes and otherwise
not; it writes a file only when its content changes. It also writes `artifacts/code/params-ok`, a constant
that the corrupt stages depend on: every stage of the pipeline then runs after `check`, and a params.yaml
that `check` refuses stops `dvc repro` before any stage removes its outputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

FOLDER = "artifacts/code"
MARKER = "params-ok"
_MARKER_TEXT = "params.yaml passed `remflow check` when this file was written\n"
_CORE = ("base.py",)


def _method_imports(tree: ast.AST) -> set[str]:
    """The sibling method modules a module imports (remflow.methods.X)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("remflow.methods."):
                found.add(node.module.split(".")[2])
            elif node.module == "remflow.methods":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("remflow.methods."):
                    found.add(a.name.split(".")[2])
    return found


def module_files(module: str, methods_dir: Path) -> list[str]:
    """The file names under methods/ that running `module`'s method executes: itself, what it imports, base."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or not (methods_dir / f"{m}.py").is_file():
            continue
        seen.add(m)
        todo.extend(_method_imports(ast.parse((methods_dir / f"{m}.py").read_text(encoding="utf-8"))))
    files = {f"{m}.py" for m in seen} | set(_CORE)
    files.discard("__init__.py")
    return sorted(files)


def source_hash(text: str) -> str:
    """sha256 of a module's source without its docstrings (the lines a docstring fills alone)."""
    lines = text.splitlines()
    try:
        tree = ast.parse(text)
    except SyntaxError:  # hash it as it is: the stage that imports it will say what is wrong
        return hashlib.sha256(text.encode()).hexdigest()
    drop: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if len(body) < 2 or not isinstance(body[0], ast.Expr):  # a body of a docstring alone keeps it
            continue
        doc = body[0].value
        if not (isinstance(doc, ast.Constant) and isinstance(doc.value, str)):
            continue
        first, last = doc.lineno - 1, (doc.end_lineno or doc.lineno) - 1
        # ast's column offsets count UTF-8 bytes
        alone = (lines[first].encode()[: doc.col_offset].strip() == b""
                 and lines[last].encode()[doc.end_col_offset or 0:].strip() == b"")
        if alone:
            drop.update(range(first, last + 1))
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def methods_dir(root: Path) -> Path:
    """The methods/ folder of the code the project's dvc.yaml points at (its `code` var), else this package's."""
    import yaml

    try:
        spec = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
        for entry in spec.get("vars") or []:
            if isinstance(entry, dict) and isinstance(entry.get("code"), str):
                return Path(root) / entry["code"] / "methods"
    except (OSError, yaml.YAMLError):
        pass
    import remflow.methods as pkg

    return Path(pkg.__file__).parent


def fingerprints(params, mdir: Path) -> dict[str, dict]:
    """run name -> {method, files: {file name: source hash}} for every entry of `methods:`."""
    from remflow.methods import REGISTRY

    out = {}
    for run, cfg in params.methods.items():
        module = REGISTRY[cfg.method].unlearn.__module__.rsplit(".", 1)[-1]
        files = module_files(module, mdir)
        out[run] = {"method": cfg.method,
                    "files": {f: source_hash((mdir / f).read_text(encoding="utf-8")) for f in files}}
    return out


def record(root: Path, params, folder: Path) -> list[str]:
    """Write FOLDER's files for `params` (a file only when its content changes; files of runs no longer under
    `methods:` removed). Returns the names written or removed."""
    from remflow.io import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    want = {f"{run}.json": json.dumps(fp, indent=1, sort_keys=True) + "\n"
            for run, fp in fingerprints(params, methods_dir(root)).items()}
    want[MARKER] = _MARKER_TEXT
    changed = []
    for name, text in want.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
            changed.append(name)
    for path in folder.iterdir():
        if path.name not in want and path.is_file():
            path.unlink()
            changed.append(path.name)
    return changed

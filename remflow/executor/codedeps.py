"""Per-run code dependencies: `method-code/<run>/` holds links to exactly the method modules a run executes.

dvc.yaml's unlearn cells come from a matrix over `grid.methods` (so `dvc exp run -S grid...` and edits of
params.yaml keep working), and DVC cannot look a run's method up from inside a matrix. So each suite carries
a folder per entry of `methods:`, with symbolic links to the module that registers the run's method, the
method modules it imports (e.g. forgetting.py, importance.py, retrain.py) and methods/base.py; a cell depends
on `method-code/${item.method}`. DVC hashes the linked files' contents, so editing scrub.py changes only the
scrub cells. `remflow run` refreshes the links before it asks DVC what changed (`remflow run --sync` only
refreshes); a run whose folder is missing makes plain `dvc repro` stop with a missing-dependency error.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

FOLDER = "method-code"
_CORE = ("base.py",)


def _method_imports(path: Path) -> set[str]:
    """The sibling method modules a module imports (remflow.methods.X), by reading its source."""
    tree = ast.parse(path.read_text())
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
        todo.extend(_method_imports(methods_dir / f"{m}.py"))
    files = {f"{m}.py" for m in seen} | set(_CORE)
    files.discard("__init__.py")
    return sorted(files)


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


def wanted(params, root: Path) -> dict[str, list[str]]:
    """run name -> the method files it depends on, for every entry of `methods:`."""
    from remflow.methods import REGISTRY

    mdir = methods_dir(root)
    out = {}
    for run, cfg in params.methods.items():
        module = REGISTRY[cfg.method].unlearn.__module__.rsplit(".", 1)[-1]
        out[run] = module_files(module, mdir)
    return out


def _target(root: Path, run: str, name: str) -> str:
    return os.path.relpath(methods_dir(root) / name, Path(root) / FOLDER / run)


def check(root: Path, params) -> list[str]:
    """What differs between method-code/ and params (empty when in sync)."""
    root = Path(root)
    problems = []
    want = wanted(params, root)
    have = {p.name for p in (root / FOLDER).iterdir() if p.is_dir()} if (root / FOLDER).is_dir() else set()
    for run in sorted(have - set(want)):
        problems.append(f"{FOLDER}/{run}: no such entry under methods:")
    for run, files in want.items():
        d = root / FOLDER / run
        present = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        if present != files:
            problems.append(f"{FOLDER}/{run}: has {present or 'nothing'}, needs {files}")
            continue
        for name in files:
            link = d / name
            if not link.is_symlink() or os.readlink(link) != _target(root, run, name):
                problems.append(f"{FOLDER}/{run}/{name}: does not link to remflow/methods/{name}")
    return problems


def sync(root: Path, params) -> bool:
    """Make method-code/ match params' `methods:`; True when something changed."""
    root = Path(root)
    if not check(root, params):
        return False
    want = wanted(params, root)
    base = root / FOLDER
    base.mkdir(exist_ok=True)
    for d in base.iterdir():
        if d.is_dir() and not d.is_symlink() and d.name not in want:
            shutil.rmtree(d)
    for run, files in want.items():
        d = base / run
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        for name in files:
            os.symlink(_target(root, run, name), d / name)
    return True


def uses_method_code(dvc_yaml: Path) -> bool:
    return dvc_yaml.is_file() and f"{FOLDER}/" in dvc_yaml.read_text()

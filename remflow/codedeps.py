"""Code fingerprints derived from imports: the `check` stage writes what each stage's code is.

The pipeline's first stage, `check` (`remflow check --record artifacts/code`), writes one JSON file per command
and one per entry of `methods:`; every other stage depends on its command's file instead of a hand-listed set
of source files, and an unlearn cell also on its run's file:

- `stage-<command>.json`: a hash of every function, class and module body the command reaches from its entry
  functions (STAGE_CODE, plus the params loader all commands share), found by following the names each
  reached definition uses through `from remflow... import` lines into the modules they come from. Editing
  `unlearn` in stages.py changes stage-unlearn.json and not stage-pretrain.json; editing train.py changes both.
  The methods package is left to the per-run files.
- `<run>.json`: the same, from the run's registered method function (its module, the method modules it uses
  and the rest of remflow they reach). Editing scrub.py re-runs the scrub cells only. DVC cannot look a run's
  files up from inside a matrix, and the matrix over `grid.methods` keeps `dvc exp run -S grid...` working; a
  new entry under `methods:` gets its file from the same `dvc repro` that runs its cells.

The hashes are of the syntax tree without docstrings (ast.dump: no comments, no formatting, no line numbers),
so a docstring, comment or formatting edit re-runs nothing and any change of what the code does counts.
Names are resolved statically: code reached only through a registry or getattr is covered when the module body
holding the registry is reached (module bodies are always hashed with the definitions they use). A module body's
imports are hashed for the names the reached code reads only: adding `import json` to a module for a function
that one stage runs leaves the other stages' fingerprints as they were (an import made for its side effects
alone, or read only through `globals()` or a string annotation, is therefore not tracked; none of remflow's is).
What a module's definitions run at import (decorators, default values, class bases and class-level statements)
counts as read, reached or not.

The stage depends on params.yaml and on the code folder, so it runs when either changes and otherwise not; it
writes a file only when its content changes. Every stage depends on one of its files, so every stage runs after
`check`, and a params.yaml that `check` refuses stops `dvc repro` before any stage removes its outputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

FOLDER = "artifacts/code"
STAGE_PREFIX = "stage-"

# what each pipeline command runs: its entry functions ("module:function") or whole modules, besides the params
# loader every command validates params.yaml with (remflow.cli._params)
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "corrupt": ("remflow.stages:corrupt",),
    "pretrain": ("remflow.stages:pretrain",),
    "discover": ("remflow.stages:discover",),
    "probe": ("remflow.stages:probe",),
    "unlearn": ("remflow.stages:unlearn",),
    "evaluate": ("remflow.evaluate:evaluate", "remflow.report:write_reports", "remflow.report:render",
                 "remflow.report:pick_reference", "remflow.report:runs_in_order"),
}
COMMON_CODE = ("remflow.params:load_params",)
_SKIP = ("remflow.methods",)  # the per-run method files cover it


def tree_hash(node: ast.AST) -> str:
    """sha256 of a syntax tree (ast.dump: no comments, no formatting, no line numbers); strip its docstrings
    first (`strip_docstrings`)."""
    return hashlib.sha256(ast.dump(node).encode()).hexdigest()


def strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove the docstrings of a module and of its classes and functions, in place."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                n.body = n.body[1:] or [ast.Pass()]
    return tree


def code_hash(text: str) -> str:
    """A module source's hash without its docstrings, comments and formatting."""
    return tree_hash(strip_docstrings(ast.parse(text)))


class _Module:
    """One remflow module's top-level definitions and imports, for the closure walk."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.tree = strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
        self.defs = {n.name: n for n in self.tree.body
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.body = [n for n in self.tree.body  # imports, constants, registries: the module's own statements
                     if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        self._hashes: dict = {}  # unit, or (None, used names) for the module's statements -> hash
        # the names the module's definitions read when the module is imported (decorators, default values, class
        # bases and class-level statements), reached or not: they run, so the imports they read count
        self.import_time = {chain[0] for chain in _names(_import_time_nodes(self.defs.values()))}
        self._imports: dict[str | None, dict] = {}
        self._names: dict[str | None, set] = {}
        self.package_imports_of = name.split(".")[0]  # the package whose imports one walk collects

    def _scan(self, unit: str | None) -> None:
        """One walk of a unit for both its names and its imports (a definition also sees the module's)."""
        names, own = _scan(self.body if unit is None else [self.defs[unit]], self.package_imports_of)
        self._names[unit] = names
        self._imports[unit] = own if unit is None else {**self.imports(None, self.package_imports_of), **own}

    def names(self, unit: str | None) -> set[tuple[str, ...]]:
        if unit not in self._names:
            self._scan(unit)
        return self._names[unit]

    def hash(self, unit: str | None, used: frozenset[str] | None = None) -> str:
        """A definition's hash, or (`unit` None) the module's own statements': with `used`, the names the walk's
        code reads from this module, its imports keep only the names bound for that code (`_used_imports`)."""
        key = unit if unit is not None or used is None else (None, used)
        if key not in self._hashes:
            if unit is None:
                body = self.body if used is None else _used_imports(self.body, used)
                node: ast.AST = ast.Module(body=body, type_ignores=[])
            else:
                node = self.defs[unit]
            self._hashes[key] = tree_hash(node)
        return self._hashes[key]

    def imports(self, unit: str | None, package: str) -> dict:
        if package != self.package_imports_of:
            return _imports(self.body + ([] if unit is None else [self.defs[unit]]), package)
        if unit not in self._imports:
            self._scan(unit)
        return self._imports[unit]


_PARSED: dict[tuple, _Module] = {}  # (path, size, mtime) -> module: one parse a file per process


def _parsed(name: str, path: Path) -> _Module:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        _PARSED[key] = _Module(name, path)
    return _PARSED[key]


def _import_time_nodes(defs) -> list[ast.AST]:
    """The parts of function and class definitions that run when their module is imported: decorators, default
    values, class bases and keywords, and a class body's statements (its methods' own such parts included)."""
    out: list[ast.AST] = []
    for d in defs:
        out += d.decorator_list
        if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += [x for x in (*d.args.defaults, *d.args.kw_defaults) if x is not None]
        elif isinstance(d, ast.ClassDef):
            out += [*d.bases, *d.keywords]
            inner = [n for n in d.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            out += [n for n in d.body if n not in inner] + _import_time_nodes(inner)
    return out


def _used_imports(body: list[ast.stmt], used: frozenset[str]) -> list[ast.stmt]:
    """A module's top-level statements with each import cut to the names in `used` (an import left with none is
    dropped): an import that no reached code reads, such as one added for another stage's new function, leaves
    the hash as it was, while an import that the reached code reads is hashed with where it comes from. `from
    __future__` and `*` imports are kept whole. An import made only for its side effects is not tracked."""
    out: list[ast.stmt] = []
    for n in body:
        if isinstance(n, (ast.Import, ast.ImportFrom)) and not (
                isinstance(n, ast.ImportFrom) and (n.module == "__future__" or any(a.name == "*" for a in n.names))):
            names = [a for a in n.names if (a.asname or a.name.split(".")[0]) in used]
            if not names:
                continue
            if len(names) != len(n.names):
                n = ast.ImportFrom(module=n.module, names=names, level=n.level) if isinstance(n, ast.ImportFrom) \
                    else ast.Import(names=names)
        out.append(n)
    return out


def _import_entries(n: ast.AST, package: str, out: dict) -> None:
    if isinstance(n, ast.ImportFrom) and n.module and n.level == 0 and (
            n.module == package or n.module.startswith(package + ".")):
        for a in n.names:
            out[a.asname or a.name] = (n.module, a.name)
    elif isinstance(n, ast.Import):
        for a in n.names:
            if a.name == package or a.name.startswith(package + "."):
                out[a.asname or a.name.split(".")[0]] = (a.name if a.asname else package, None)


def _imports(nodes, package: str) -> dict[str, tuple[str, str | None]]:
    """name -> (module, attribute or None) for the remflow imports among `nodes` (walked)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in nodes:
        for n in ast.walk(node):
            _import_entries(n, package, out)
    return out


def _names(nodes) -> set[tuple[str, ...]]:
    """The names used in `nodes`, each with the attribute chain read off it (x, x.y, x.y.z)."""
    return _scan(nodes, None)[0]


def _scan(nodes, package: str | None) -> tuple[set[tuple[str, ...]], dict]:
    """One walk of `nodes`: the names they use, each with the attribute chain read off it (x, x.y, x.y.z), and
    (for a `package`) its imports among them, as `_imports` reads them."""
    names: set[tuple[str, ...]] = set()
    imports: dict[str, tuple[str, str | None]] = {}
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute):
                chain = []
                v = n
                while isinstance(v, ast.Attribute):
                    chain.append(v.attr)
                    v = v.value
                if isinstance(v, ast.Name):
                    names.add((v.id, *reversed(chain)))
            elif isinstance(n, ast.Name):
                names.add((n.id,))
            elif package is not None and isinstance(n, (ast.Import, ast.ImportFrom)):
                _import_entries(n, package, imports)
    return names, imports


def stage_code(code_root: Path, entries: tuple[str, ...], package: str = "remflow", skip: tuple[str, ...] = _SKIP,
               common: tuple[str, ...] = COMMON_CODE) -> dict[str, str]:
    """'<file>:<definition>' (or '<file>' for a module's top-level statements) -> tree hash, for everything
    the entry functions reach (and the `common` ones), modules under `skip` left out. `code_root` is the
    package folder (remflow/)."""
    modules: dict[str, _Module] = {}

    def module(name: str) -> _Module | None:
        if (skip and name.startswith(skip)) or not (name == package or name.startswith(package + ".")):
            return None
        if name not in modules:
            rel = Path(*name.split(".")[1:])
            path = code_root / rel / "__init__.py" if (code_root / rel).is_dir() else code_root / f"{rel}.py"
            if not path.is_file():
                return None
            modules[name] = _parsed(name, path)
        return modules[name]

    reached: set[tuple[str, str | None]] = set()  # (module, definition); None: the module's top-level code
    used: dict[str, set[str]] = {}  # module -> the names reached code reads in it (its imports are cut to them)
    followed: set[tuple[str, str | None]] = set()  # re-exports followed (two modules may re-export from each other)
    todo: list[tuple[str, str | None]] = []
    for entry in entries + common:
        mod, _, fn = entry.partition(":")
        todo.append((mod, fn or None))
    while todo:
        mod_name, fn = todo.pop()
        m = module(mod_name)
        if m is None:
            continue
        units = [(mod_name, None)] + ([(mod_name, fn)] if fn is not None and fn in m.defs else [])
        if fn is not None and fn not in m.defs:  # an attribute that is not a definition: a submodule or a value
            used.setdefault(mod_name, set()).add(fn)
            sub = module(f"{mod_name}.{fn}")
            if sub is not None:
                todo.append((sub.name, None))
            elif fn in m.imports(None, package) and (mod_name, fn) not in followed:  # imported from elsewhere
                followed.add((mod_name, fn))
                src, attr = m.imports(None, package)[fn]
                todo.append((src, attr) if attr is None or module(f"{src}.{attr}") is None
                            else (f"{src}.{attr}", None))
        for unit in units:
            if unit in reached:
                continue
            reached.add(unit)
            imported = m.imports(unit[1], package)
            for chain in m.names(unit[1]):
                head = chain[0]
                used.setdefault(mod_name, set()).add(head)
                if head in m.defs:
                    todo.append((mod_name, head))
                elif head in imported:
                    src, attr = imported[head]
                    if attr is None:  # `import remflow.x` / `from remflow import x` as a module: x.f
                        todo.append((src, chain[1] if len(chain) > 1 else None))
                    elif module(f"{src}.{attr}") is not None:  # `from remflow import stages`: stages.f
                        todo.append((f"{src}.{attr}", chain[1] if len(chain) > 1 else None))
                    else:
                        todo.append((src, attr))
    out = {}
    for mod_name, fn in sorted(reached, key=lambda u: (u[0], u[1] or "")):
        m = modules[mod_name]
        rel = m.path.relative_to(code_root).as_posix()
        out[rel if fn is None else f"{rel}:{fn}"] = m.hash(fn, frozenset(used.get(mod_name, set()) | m.import_time))
    return out


def stage_fingerprints(code_root: Path) -> dict[str, dict]:
    """command -> {files: {'<file>[:<definition>]': hash}} for every command of STAGE_CODE."""
    return {cmd: {"command": cmd, "files": stage_code(code_root, entries)} for cmd, entries in STAGE_CODE.items()}


def source_files(path: str | os.PathLike) -> list[str] | None:
    """The source files behind a fingerprint file artifacts/code/<name>.json (None: not one)."""
    path = Path(path)
    if path.suffix != ".json" or path.parent.name != "code":
        return None
    try:
        fp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(fp, dict) or not isinstance(fp.get("files"), dict) or not isinstance(fp.get("code"), str):
        return None
    root = path.parents[2] / fp["code"]
    return [str(root / f) for f in code_files(fp)]


def code_files(fingerprint: dict) -> list[str]:
    """The files (relative to the code folder) a fingerprint's entries lie in."""
    return sorted({key.split(":")[0] for key in fingerprint.get("files", {})})


def code_var(root: Path, name: str = "dvc.yaml") -> str | None:
    """The project's `code` var (the folder of the remflow package DVC hashes, relative to the project), as its
    dvc.yaml writes it under `vars:`; None when it writes none or cannot be read."""
    import yaml

    try:
        spec = yaml.safe_load((Path(root) / name).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    for entry in (spec.get("vars") or []) if isinstance(spec, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("code"), str):
            return entry["code"]
    return None


def methods_dir(root: Path) -> Path:
    """The methods/ folder of the code the project's dvc.yaml points at (its `code` var), else this package's."""
    code = code_var(root)
    if code is not None:
        return Path(root) / code / "methods"
    import remflow.methods as pkg

    return Path(pkg.__file__).parent


def _code_var(root: Path, mdir: Path | None = None) -> str:
    """dvc.yaml's `code` var (the package folder relative to the project), for readers of the files; `mdir`:
    `methods_dir(root)` when the caller has it."""
    mdir = methods_dir(root) if mdir is None else mdir
    try:
        return Path(os.path.relpath(mdir.parent, root)).as_posix()
    except ValueError:  # another drive
        return mdir.parent.as_posix()


def fingerprints(params, mdir: Path) -> dict[str, dict]:
    """run name -> {method, files: {'<file>[:<definition>]': hash}} for every entry of `methods:`: what the
    run's method function reaches (its module, the method modules and the rest of remflow it uses)."""
    from remflow.methods import REGISTRY

    out = {}
    for run, cfg in params.methods.items():
        fn = REGISTRY[cfg.method].unlearn
        module = fn.__module__.rsplit(".", 1)[-1]
        entry = f"remflow.methods.{module}:{fn.__name__}"
        out[run] = {"method": cfg.method, "files": stage_code(mdir.parent, (entry,), skip=(), common=())}
    return out


def _is_fingerprint(path: Path) -> bool:
    """A file `record` writes: a JSON object naming the files (and definitions) it hashes for a run or command, or
    the temporary file of one that an interrupted write left (`.<name>.json.<host>.<pid>-<random>.tmp`, remflow.io)."""
    if path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp") and ".json." in path.name:
        return True
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # no "code" key required: fingerprints of earlier remflow versions lack it, and are remflow's to rewrite
    return isinstance(d, dict) and isinstance(d.get("files"), dict) and ("method" in d or "command" in d)


def record(root: Path, params, folder: Path) -> list[str]:
    """Write FOLDER's files for `params` (a file only when its content changes; files of runs no longer under
    `methods:` removed). Returns the names written or removed."""
    from remflow.errors import RemflowError
    from remflow.io import atomic_write_text

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RemflowError("--record takes a folder; this is a file", key="--record", got=str(folder))
    foreign = sorted(p.name for p in folder.iterdir() if not _is_fingerprint(p)) if folder.is_dir() else []
    if foreign:  # the folder is remflow's to prune: refuse one that holds anything else, before writing
        raise RemflowError("--record writes a folder of its own, and this one holds other files", key="--record",
                           got=f"{folder} (holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                           hint="give a new or empty folder (the pipeline's is artifacts/code)")
    folder.mkdir(parents=True, exist_ok=True)
    mdir = methods_dir(root)
    code_var = _code_var(root, mdir)  # dvc.yaml read once, not once a file
    want = {f"{run}.json": json.dumps({**fp, "code": code_var}, indent=1, sort_keys=True) + "\n"
            for run, fp in fingerprints(params, mdir).items()}
    code = mdir.parent
    for cmd, fp in stage_fingerprints(code).items():
        want[f"{STAGE_PREFIX}{cmd}.json"] = json.dumps({**fp, "code": code_var}, indent=1, sort_keys=True) + "\n"
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

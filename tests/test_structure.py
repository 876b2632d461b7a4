"""The package's shape: no import circle inside remflow/, no params key that DVC's run cache ignores, a method
registry that finds its modules by itself."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import ROOT

PKG = ROOT / "remflow"


def import_graph() -> dict[str, set[str]]:
    """module -> the remflow modules it imports (imports inside functions count); an arrow to the __init__ of a
    package the module lives in is left out (a package that imports its own modules is not a circle)."""
    mods = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
            for f in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not (m.startswith(t + ".") and mods[t].name == "__init__.py"):
                    graph[m].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_methods_do_not_import_the_loader_and_pretraining_not_the_methods():
    graph = import_graph()
    for m, targets in graph.items():
        if m.startswith("remflow.methods"):
            assert "remflow.params" not in targets, m
    assert not any(t.startswith("remflow.methods") for t in graph["remflow.config"])
    # pretraining's modules (what the pretrain stage runs) reach nothing of methods/
    reach, todo = set(), ["remflow.train", "remflow.data.task", "remflow.models", "remflow.seeds"]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += graph[m]
    assert not any(m.startswith("remflow.methods") for m in reach), sorted(reach)


def _models_in(tp) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def schema_keys() -> set[tuple[str, ...]]:
    """Every key path of the params schema, through nested sections, unions and every method's config."""
    from remflow.params import schema
    from remflow.methods import REGISTRY

    seen: set[tuple[str, ...]] = set()

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, f in model.model_fields.items():
            key = path + (name,)
            if key in seen:
                continue
            seen.add(key)
            for sub in _models_in(f.annotation):
                walk(sub, key)

    walk(schema(), ())
    for name, m in REGISTRY.items():
        walk(m.config, ("methods", name))
    return seen


def test_no_params_key_is_named_size_or_nfiles():
    """DVC's run cache drops keys named `size` or `nfiles`, at any depth, from the hash it looks runs up by
    (treeverse/dvc#10296): a change of such a key could restore stale outputs."""
    keys = schema_keys()
    assert ("corruption", "count") in keys and ("methods", "rem", "beta") in keys  # the walk reaches them
    bad = sorted(".".join(k) for k in keys if k[-1] in ("size", "nfiles"))
    assert not bad, bad


def test_shipped_params_files_use_no_such_key():
    from remflow.params import read_yaml

    files = [ROOT / "params.yaml", ROOT / "pipelines" / "smoke.yaml", *sorted(ROOT.glob("pipelines/*/params.yaml"))]

    def keys(node, path=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield path + (str(k),)
                yield from keys(v, path + (str(k),))

    for f in files:
        bad = [".".join(k) for k in keys(read_yaml(f)) if k[-1] in ("size", "nfiles")]
        assert not bad, f"{f}: {bad}"


def test_registry_finds_every_method_module():
    from remflow.methods import REGISTRY

    shared = {"__init__", "base", "forgetting", "importance"}
    modules = {p.stem for p in (PKG / "methods").glob("*.py")} - shared
    registered_in = {m.unlearn.__module__.rpartition(".")[2] for m in REGISTRY.values()}
    assert modules <= registered_in, modules - registered_in


def test_names_users_choose_are_refused_as_size_or_nfiles_too():
    """The schema has no such key, but a run under `methods:`, a plug-in's `options` and a detection spec are
    named by the user: `remflow check` refuses those names as well, at their key path."""
    from remflow.params import ParamsError, validate
    from conftest import root_params, merge

    cases = {
        "methods.size": {"grid": {"methods": ["size"]}, "methods": {"size": {"method": "rem"}}},
        "model.options.nfiles": {"model": {"name": "mypkg.nets:Net", "options": {"nfiles": 3}}},
        "data.options.reader.size": {"data": {"dataset": "mypkg.data:load", "options": {"reader": {"size": 8}}}},
    }
    for key, change in cases.items():
        with pytest.raises(ParamsError) as e:
            validate(merge(root_params(), change))
        got = {k for k, _, _ in e.value.problems}
        assert key in got, (key, e.value.problems)
        assert any("treeverse/dvc#10296" in problem for _, problem, _ in e.value.problems)

"""The params schema: YAML 1.2 as DVC reads it, every section strict, errors that name the key path."""

from __future__ import annotations

import pytest

from conftest import ROOT, make_params, merge, root_params
from remflow.errors import RemflowError
from remflow.params import load_params, validate
from remflow.params import ParamsError, read_yaml


def problems(raw: dict) -> list[tuple[str, str, str]]:
    with pytest.raises(ParamsError) as e:
        validate(raw)
    return e.value.problems


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.dataset == "digits"
    assert set(p.grid.methods) <= set(p.methods)


def test_yaml_is_read_as_yaml_1_2(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("pretrain:\n  lr: 1e-3\ndata:\n  download: false\nevaluate:\n  taxonomy_run: null\n")
    raw = read_yaml(f)
    assert raw["pretrain"]["lr"] == 0.001 and isinstance(raw["pretrain"]["lr"], float)  # PyYAML reads a string
    assert load_params(f).pretrain.lr == 0.001


def test_unknown_key_names_its_path():
    [(key, problem, got)] = problems({"model": {"name": "cnn", "widht": 3}})
    assert key == "model.widht" and "unknown key" in problem and got == "3"
    [(key, _, _)] = problems({"pretrain": {"etd": {"keepp": 0.2}}})
    assert key == "pretrain.etd.keepp"


def test_a_plug_in_models_own_key_says_where_its_arguments_go():
    # the default suite's `width: 8` left in place when model.name becomes a plug-in is not a typo
    raw = merge(root_params(), {"model": {"name": "mypkg.nets:Good"}})
    with pytest.raises(ParamsError) as e:
        validate(raw, light=True)
    assert [(k, m) for k, m, _ in e.value.problems] == [
        ("model.width", "not a key of a plug-in model: its constructor's arguments go under `model.options`")]


def test_wrong_type_names_its_path():
    [(key, problem, got)] = problems({"unlearn": {"batch_size": "large"}})
    assert key == "unlearn.batch_size" and "integer" in problem and "large" in got


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
def test_rate_outside_unit_interval(rate):
    rows = problems({"grid": {"discovery_rates": [0.5, rate]}})
    assert rows[0][0] == "grid.discovery_rates.1"


@pytest.mark.parametrize("over, key", [
    ({"grid": {"discovery_rates": [0.5, True]}}, "grid.discovery_rates.1"),
    ({"grid": {"seeds": [True]}}, "grid.seeds.0"),
    ({"corruption": {"count": True}}, "corruption.count"),
    ({"pretrain": {"lr": False}}, "pretrain.lr"),
])
def test_true_or_false_is_no_number(over, key):
    """YAML reads `yes`/`true` as a boolean, which pydantic alone would take for 1 (a rate of 1.0, a count of 1)."""
    [(got_key, problem, _)] = problems(over)
    assert got_key == key and "not true or false" in problem


def test_an_infinite_learning_rate_is_refused():
    [(key, _, _)] = problems({"unlearn": {"lr": float("inf")}})
    assert key == "unlearn.lr"
    [(key, problem, _)] = problems({"corruption": {"count": -5}})
    assert key == "corruption.count" and "at least one sample" in problem


def test_a_value_that_fits_no_member_of_a_union_is_one_problem_at_its_key():
    [(key, problem, got)] = problems({"corruption": {"backdoor": {"value": "min"}}})
    assert key == "corruption.backdoor.value" and "'max'" in problem and "number" in problem and got == "'min'"
    raw = root_params()
    raw["model"] = {"width": 16}
    [(key, problem, _)] = problems(raw)
    assert key == "model.name" and "missing" in problem and "resnet9" in problem
    [(key, problem, got)] = problems({"grid": {"etd_methods": ["rem"], "pretrain_variants": ["standard"]}})
    assert key == "grid.pretrain_variants" and "'etd'" in problem and got == "['standard']"


def test_unknown_method():
    [(key, problem, got)] = problems({"methods": {"mine": {"method": "remx"}}})
    assert key == "methods.mine" and "unknown method" in problem and "remx" in got and "'rem'" in problem
    [(key, problem, _)] = problems({"methods": {"remx": {}}})
    assert key == "methods.remx"


def test_method_config_errors_name_the_run():
    [(key, _, got)] = problems({"methods": {"rem": {"gamma": 2.0}}})
    assert key == "methods.rem.gamma" and got == "2.0"


def test_grid_method_needs_an_entry():
    [(key, problem, got)] = problems({"grid": {"methods": ["rem"]}})
    assert key == "grid.methods.0" and "methods:" in problem and got == "'rem'"


def test_etd_methods_need_etd_pretraining():
    rows = problems({"grid": {"etd_methods": ["rem"], "pretrain_variants": ["standard"]}, "methods": {"rem": {}}})
    assert rows[0][0] == "grid.pretrain_variants" and "etd" in rows[0][1]


def test_corruption_count_is_a_count_or_a_fraction():
    assert validate({"corruption": {"count": 0.02}}).corruption.count == 0.02
    assert validate({"corruption": {"count": 1000}}).corruption.count == 1000
    [(key, problem, _)] = problems({"corruption": {"count": 1000.0}})
    assert key == "corruption.count" and "integer" in problem


def test_method_recipe_inherits_the_unlearning_budget():
    p = make_params({"methods": {"finetune": {"lr": 0.1}}})
    r = p.methods["finetune"].recipe(p.unlearn)
    assert r.lr == 0.1 and r.batch_size == p.unlearn.batch_size and r.epochs == p.unlearn.epochs


def test_defaults_are_the_papers():
    p = validate({})
    assert (p.pretrain.lr, p.pretrain.batch_size, p.pretrain.epochs) == (0.025, 512, 41)
    assert (p.unlearn.lr, p.unlearn.epochs, p.unlearn.schedule) == (0.005, 10, "constant")
    assert p.grid.discovery_rates == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert p.corruption.count == 1000 and p.corruption.interclass.classes == (3, 5)


def test_missing_params_file(tmp_path):
    with pytest.raises(RemflowError) as e:
        load_params(tmp_path / "nope.yaml")
    assert "nope.yaml" in e.value.key


def test_merge_helper_is_deep():
    assert merge(root_params(), {"model": {"width": 3}})["model"] == {"name": "cnn", "width": 3}

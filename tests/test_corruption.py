"""The three corruptions and discovery, faithful to the paper's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from remflow.data.corruption import check_discovery, check_manifest, make_discovery, make_manifest, trigger_value
from remflow.data.datasets import load_splits
from remflow.errors import RemflowError
from remflow.params import CorruptionCfg


@pytest.fixture(scope="module")
def splits(digits_params):
    return load_splits(digits_params.data)


def test_backdoor(splits):
    m = make_manifest("high", 0, CorruptionCfg(count=64), splits)
    assert len(m["indices"]) == 64 and len(set(m["indices"])) == 64
    assert set(m["labels"]) == {0}
    assert m["trigger"]["size"] == 3
    # the trigger value is the largest value of the normalised training data: a white patch
    assert m["trigger"]["value"] == pytest.approx((1.0 - splits.mean[0]) / splits.std[0])
    assert make_manifest("high", 0, CorruptionCfg(count=64), splits) == m  # seeded
    assert make_manifest("high", 1, CorruptionCfg(count=64), splits)["indices"] != m["indices"]


def test_interclass_confusion_takes_the_first_half_of_each_class(splits):
    m = make_manifest("medium", 0, CorruptionCfg(count=64), splits)
    idx, new = np.array(m["indices"]), np.array(m["labels"])
    y = splits.train_y
    assert np.array_equal(np.sort(idx[y[idx] == 3]), np.flatnonzero(y == 3)[:32])
    assert np.array_equal(np.sort(idx[y[idx] == 5]), np.flatnonzero(y == 5)[:32])
    assert np.all(new[y[idx] == 3] == 5) and np.all(new[y[idx] == 5] == 3)
    with pytest.raises(RemflowError, match="even"):
        make_manifest("medium", 0, CorruptionCfg(count=63), splits)
    with pytest.raises(RemflowError, match="training samples"):
        make_manifest("medium", 0, CorruptionCfg(count=600), splits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_labels_are_drawn_over_all_classes_as_released(splits, seed):
    # the released code's new label is uniform over all classes: about 1/num_classes keep their true label
    m = make_manifest("low", seed, CorruptionCfg(count=0.5), splits)
    idx, new = np.array(m["indices"]), np.array(m["labels"])
    assert len(idx) == round(0.5 * len(splits.train_y)) and np.all((0 <= new) & (new < 10))
    kept = float(np.mean(new == splits.train_y[idx]))
    assert abs(kept - 0.1) < 0.04, kept  # 647 draws: one standard deviation is 0.012
    assert np.bincount(new, minlength=10).min() > 0.5 * len(new) / 10  # every class drawn, none starved
    wrong = make_manifest("low", seed, CorruptionCfg(count=0.5, random_labels={"always_wrong": True}), splits)
    assert wrong["indices"] == m["indices"]  # the switch changes the labels only


def test_always_wrong_random_labels_never_keep_the_true_label(splits):
    cfg = CorruptionCfg(count=0.1, random_labels={"always_wrong": True})
    m = make_manifest("low", 0, cfg, splits)
    idx, new = np.array(m["indices"]), np.array(m["labels"])
    assert len(idx) == round(0.1 * len(splits.train_y))
    assert np.all(new != splits.train_y[idx]) and np.all((0 <= new) & (new < 10))
    assert len(set(new.tolist())) == 10


def test_count_outside_the_training_set(splits):
    with pytest.raises(RemflowError) as e:
        make_manifest("low", 0, CorruptionCfg(count=10**6), splits)
    assert e.value.key == "corruption.count"


def test_discovery_is_a_nested_seeded_subset(splits):
    m = make_manifest("high", 0, CorruptionCfg(count=64), splits)
    sets = [set(make_discovery(m, r, 0)["indices"]) for r in (0.1, 0.5, 1.0)]
    assert [len(s) for s in sets] == [6, 32, 64]
    assert sets[0] < sets[1] < sets[2] == set(m["indices"])
    assert set(make_discovery(m, 0.5, 1)["indices"]) != sets[1]
    with pytest.raises(RemflowError):
        make_discovery(m, 1.5, 0)


def test_discovered_index_outside_the_corrupted_set(splits):
    m = make_manifest("high", 0, CorruptionCfg(count=64), splits)
    d = make_discovery(m, 0.5, 0)
    bad = {**d, "indices": d["indices"] + [next(i for i in range(10**4) if i not in m["indices"])]}
    with pytest.raises(RemflowError, match="not in the corrupted set"):
        check_discovery(bad, m, "d.json")


def test_corrupted_manifest_is_refused(splits):
    m = make_manifest("low", 0, CorruptionCfg(count=64), splits)
    for broken in ({**m, "format": "x"}, {k: v for k, v in m.items() if k != "indices"},
                   {**m, "indices": m["indices"][:-1]}, {**m, "labels": [99] * 64},
                   {**m, "indices": [10**6] * 64}, {**m, "fingerprint": "other"}, []):
        with pytest.raises(RemflowError):
            check_manifest(broken, splits, "m.json")
    assert check_manifest(m, splits, "m.json") is m


def test_trigger_value_can_be_given(splits):
    assert trigger_value(CorruptionCfg(backdoor={"value": 1.5}), splits) == 1.5

"""AUC / UAUC against scikit-learn and a per-user loop; UAUC user counts on the shared split (§7)."""
import functools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cora_jax.data import load_dataset
from cora_jax.metrics import SplitMetrics, auc, evaluate_split, uauc, warm_cold_report


@functools.lru_cache(maxsize=1)
def _shared(path):
    return load_dataset(path)


def _loop_uauc(u, y, s):
    vals = [roc_auc_score(y[u == k], s[u == k]) for k in np.unique(u) if len(np.unique(y[u == k])) == 2]
    return float(np.mean(vals)), len(vals), len(np.unique(u))


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_and_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 4000))
    y = rng.integers(0, 2, n)
    s = rng.integers(0, int(rng.integers(2, 30)), n) / 7.0  # few distinct values: many ties
    if seed % 2:
        s = s.astype(np.float32) * 3.3  # float32 scores as a model returns them
    u = rng.integers(0, int(rng.integers(5, 300)), n) * 11  # sparse user ids
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-12
    value, counted, users = uauc(u, y, s)
    ref_value, ref_counted, ref_users = _loop_uauc(u, y, s.astype(np.float64))
    assert abs(value - ref_value) < 1e-12 and (counted, users) == (ref_counted, ref_users)
    # invariant to row order
    p = rng.permutation(n)
    assert abs(uauc(u[p], y[p], s[p])[0] - value) < 1e-12 and abs(auc(y[p], s[p]) - auc(y, s)) < 1e-12


def test_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([1, 0], [2.0, 1.0]) == 1.0
    assert np.isnan(auc([1, 1], [0.1, 0.2]))
    # user 1: perfect; user 2: reversed; user 3: one row; user 4: one class
    v, c, t = uauc([1, 1, 2, 2, 3, 4, 4], [0, 1, 0, 1, 1, 0, 0], [0.1, 0.9, 0.9, 0.1, 0.3, 0.2, 0.4])
    assert (v, c, t) == (0.5, 2, 4)
    with pytest.raises(ValueError):
        auc([0, 1, 1], [0.1, 0.2])


def test_uauc_user_counts_on_shared_split(ml1m_dir):
    ds = _shared(ml1m_dir)
    rng = np.random.default_rng(0)
    want = {"test": (224, 320), "valid": (282, 356), "valid_small": (239, 331), "test_warm": (176, 264),
            "test_cold": (51, 97)}
    for name, counts in want.items():
        s = ds[name]
        _, counted, users = uauc(s.uid, s.label, rng.normal(size=len(s)))
        assert (counted, users) == counts, name


def test_warm_cold_report(ml1m_dir):
    test = _shared(ml1m_dir)["test"]
    scores = np.random.default_rng(1).normal(size=len(test)) + 0.5 * test.label  # informative scores
    rep = warm_cold_report(test, scores)
    assert list(rep) == ["test", "test_warm", "test_cold"]
    assert all(isinstance(m, SplitMetrics) for m in rep.values())
    assert (rep["test"].rows, rep["test_warm"].rows, rep["test_cold"].rows) == (7331, 4153, 3178)
    assert (rep["test"].uauc_users, rep["test"].users) == (224, 320)
    assert abs(rep["test"].auc - roc_auc_score(test.label, scores)) < 1e-12
    warm = test.not_cold == 1
    assert abs(rep["test_warm"].auc - roc_auc_score(test.label[warm], scores[warm])) < 1e-12
    assert rep["test"].auc > 0.6  # the scores carry signal
    assert evaluate_split(test, scores) == rep["test"]
    with pytest.raises(ValueError):
        evaluate_split(test, scores[:-1])

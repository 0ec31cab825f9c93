"""AUC / UAUC against scikit-learn and a per-user loop; UAUC user counts on the shared split (docs/reference.md#metrics); DeLong's
paired test against its quadratic definition and a paired bootstrap."""
import functools
import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cora_jax.data import load_dataset
from cora_jax.metrics import (
    SplitMetrics, auc, delong_components, delong_paired, evaluate_split, uauc, warm_cold_report,
)


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


def _correlated_scores(rng, n, decimals=1):
    """Labels and two models' scores sharing a noise term (correlated, as two models on the same rows are),
    rounded so that many scores tie within and across classes."""
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = np.round(0.9 * y + shared + 0.6 * rng.normal(size=n), decimals)
    b = np.round(0.5 * y + shared + 0.6 * rng.normal(size=n), decimals)
    return y, a, b


def _quadratic_delong_se(y, a, b):
    """DeLong et al. (1988) written out: psi over every (positive, negative) pair, the covariance matrices of
    the structural components, and var(AUC_a - AUC_b) = S_aa + S_bb - 2 S_ab."""
    y = y.astype(bool)
    v10, v01 = [], []
    for s in (a, b):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    cov = np.cov(np.array(v10)) / y.sum() + np.cov(np.array(v01)) / (~y).sum()
    return np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), v10, v01


@pytest.mark.parametrize("seed", range(4))
def test_delong_against_quadratic_definition_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, a, b = _correlated_scores(rng, int(rng.integers(30, 500)), decimals=int(rng.integers(0, 3)))
    r = delong_paired(y, a, b)
    se, v10, v01 = _quadratic_delong_se(y, a, b)
    assert abs(r.se - se) < 1e-12 * max(se, 1.0) and r.se > 0
    for s, q10, q01 in zip((a, b), v10, v01):
        c10, c01 = delong_components(y, s)
        np.testing.assert_allclose(c10, q10, atol=1e-12)
        np.testing.assert_allclose(c01, q01, atol=1e-12)
    assert abs(r.auc - roc_auc_score(y, a)) < 1e-12 and abs(r.auc_reference - roc_auc_score(y, b)) < 1e-12
    assert r.delta == r.auc - r.auc_reference
    assert (r.rows, r.positives, r.negatives) == (len(y), int(y.sum()), int((1 - y).sum()))
    z = r.delta / r.se
    assert abs(r.p - 2 * norm.sf(abs(z))) < 1e-12
    assert abs(r.ci_low - (r.delta - norm.ppf(0.975) * r.se)) < 1e-12
    assert abs(r.ci_high - (r.delta + norm.ppf(0.975) * r.se)) < 1e-12


def test_delong_se_matches_paired_bootstrap():
    """The paired bootstrap over rows estimates the same standard error without DeLong's formula."""
    rng = np.random.default_rng(7)
    y, a, b = _correlated_scores(rng, 600)
    r = delong_paired(y, a, b)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(y), len(y))  # one draw of rows for both models: paired
        boot.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    boot_se = np.std(boot, ddof=1)
    assert abs(boot_se / r.se - 1) < 0.10, (boot_se, r.se)
    assert r.ci_low > 0 and r.p < 0.05  # the first model carries more signal


def test_delong_identical_rankings_give_zero_and_p_one():
    rng = np.random.default_rng(3)
    y, a, _ = _correlated_scores(rng, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero or NaN warning
        for other in (a, 10 * a + 3, a.astype(np.float32)):  # the same ranking: the same rows win
            r = delong_paired(y, a, other)
            assert (r.delta, r.se, r.ci_low, r.ci_high, r.p) == (0.0, 0.0, 0.0, 0.0, 1.0)
            assert r.auc == r.auc_reference and abs(r.auc - auc(y, a)) < 1e-12
        # fewer than two rows in a class: no variance, all NaN
        r = delong_paired([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
        assert np.isnan([r.auc, r.delta, r.se, r.p]).all() and (r.positives, r.negatives) == (1, 3)
    with pytest.raises(ValueError):
        delong_paired([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])

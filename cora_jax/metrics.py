"""AUC and UAUC exactly as the reference defines them (docs/reference.md#metrics), vectorised.

AUC is the rank statistic (Mann-Whitney U / (P * N)) with tied scores given their average rank,
which equals scikit-learn's roc_auc_score. UAUC is the unweighted mean of per-user AUCs over users
with at least one positive and one negative row (a user with one row has one class and is skipped);
it is computed with one sort by (user, score) and segment sums, without a loop over users.

delong_paired compares two models' AUCs on the same rows: the difference, its DeLong standard error, a
95% interval and a two-sided p-value.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from cora_jax.data.split import Split


def _tie_average_ranks(sorted_keys: tuple[np.ndarray, ...], group_start: np.ndarray) -> np.ndarray:
    """float64 [n]: 1-based rank inside each group, ties (equal keys) sharing their average rank.

    sorted_keys: arrays already sorted lexicographically; rows with all keys equal are tied.
    group_start: int64 [n], the index of the first row of each row's group.
    """
    n = len(sorted_keys[0])
    new_run = np.ones(n, bool)
    if n > 1:
        same = np.ones(n - 1, bool)
        for k in sorted_keys:
            same &= k[1:] == k[:-1]
        new_run[1:] = ~same
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n] - 1  # inclusive
    run_of = np.cumsum(new_run) - 1
    mid = (run_start + run_end) / 2.0  # average 0-based position of the run
    return mid[run_of] - group_start + 1.0


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """labels: [n] 0/1; scores: [n] float. NaN when only one class is present."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = _tie_average_ranks((scores[order],), np.zeros(len(order), np.int64))
    rank_sum = ranks[labels[order]].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def uauc(uids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int, int]:
    """(mean per-user AUC, users counted, users total); NaN value when no user counts."""
    uids = np.asarray(uids).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (uids.shape == labels.shape == scores.shape):
        raise ValueError(f"uids {uids.shape}, labels {labels.shape}, scores {scores.shape} differ in length")
    if len(uids) == 0:
        return float("nan"), 0, 0
    order = np.lexsort((scores, uids))  # by user, then score
    u, s, y = uids[order], scores[order], labels[order]
    user_start = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    group_start = np.repeat(user_start, np.diff(np.r_[user_start, len(u)]))
    ranks = _tie_average_ranks((u, s), group_start)
    pos = np.add.reduceat(y.astype(np.float64), user_start)
    size = np.diff(np.r_[user_start, len(u)]).astype(np.float64)
    neg = size - pos
    rank_sum = np.add.reduceat(np.where(y, ranks, 0.0), user_start)
    counted = (pos > 0) & (neg > 0)
    per_user = (rank_sum[counted] - pos[counted] * (pos[counted] + 1) / 2.0) / (pos[counted] * neg[counted])
    value = float(per_user.mean()) if counted.any() else float("nan")
    return value, int(counted.sum()), len(user_start)


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    auc: float  # over all rows
    uauc: float  # mean per-user AUC over users with both classes
    uauc_users: int  # users that count in UAUC
    users: int  # distinct users in the split
    rows: int  # rows scored


def evaluate_split(split: Split, scores: np.ndarray) -> SplitMetrics:
    """scores: float [len(split)], one per row in the split's order."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(split):
        raise ValueError(f"{split.name}: got {len(scores)} scores for {len(split)} rows")
    value, counted, users = uauc(split.uid, split.label, scores)
    return SplitMetrics(auc=auc(split.label, scores), uauc=value, uauc_users=counted, users=users, rows=len(split))


def warm_cold_report(split: Split, scores: np.ndarray) -> dict[str, SplitMetrics]:
    """Metrics on the split, its warm rows (not_cold == 1) and cold rows; keys name, name_warm, name_cold."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = {split.name: evaluate_split(split, scores)}
    for view, mask in (("warm", split.not_cold == 1), ("cold", split.not_cold == 0)):
        idx = np.flatnonzero(mask)
        out[f"{split.name}_{view}"] = evaluate_split(split.take(idx, f"{split.name}_{view}"), scores[idx])
    return out


def _midranks(x: np.ndarray) -> np.ndarray:
    """float64 [n]: 1-based rank of each x in x, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = _tie_average_ranks((x[order],), np.zeros(len(x), np.int64))
    return ranks


def delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of one AUC, by midranks (Sun & Xu 2014), O(n log n).

    Returns (v10 [P], v01 [N]): for each positive, the share of negatives it outscores (ties count 1/2);
    for each negative, the share of positives that outscore it. Both average to the AUC.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = scores[labels], scores[~labels]
    tz = _midranks(np.r_[pos, neg])  # rank among all rows ...
    v10 = (tz[:len(pos)] - _midranks(pos)) / len(neg)  # ... less the rank among positives = negatives below
    v01 = 1.0 - (tz[len(pos):] - _midranks(neg)) / len(pos)
    return v10, v01


_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclasses.dataclass(frozen=True)
class PairedAUC:
    auc: float  # the method's AUC on the paired rows
    auc_reference: float  # the reference's AUC on the same rows
    delta: float  # auc - auc_reference
    se: float  # DeLong standard error of delta
    ci_low: float  # 95% interval: delta -+ 1.96 se
    ci_high: float
    p: float  # two-sided p-value of "equal AUCs" (z = delta / se)
    rows: int
    positives: int
    negatives: int


def delong_paired(labels: np.ndarray, scores: np.ndarray, scores_reference: np.ndarray) -> PairedAUC:
    """DeLong's test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988) on the same rows.

    The AUC difference has variance var(v10 - v10_ref) / P + var(v01 - v01_ref) / N over the structural
    components (delong_components); the 95% interval and p-value use the normal approximation. Identical
    rankings give delta 0, se 0 and p 1. All NaN when a class has fewer than two rows (no variance).
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    scores_reference = np.asarray(scores_reference, dtype=np.float64).reshape(-1)
    if not (labels.shape == scores.shape == scores_reference.shape):
        raise ValueError(f"labels {labels.shape}, scores {scores.shape}, reference scores {scores_reference.shape} "
                         "differ in length")
    pos = int(labels.sum())
    neg = len(labels) - pos
    if min(pos, neg) < 2:
        nan = float("nan")
        return PairedAUC(nan, nan, nan, nan, nan, nan, nan, len(labels), pos, neg)
    v10, v01 = delong_components(labels, scores)
    r10, r01 = delong_components(labels, scores_reference)
    a, b = float(v10.mean()), float(r10.mean())
    delta = a - b
    # The variance of the difference taken directly, so identical components give exactly 0.
    se = math.sqrt(np.var(v10 - r10, ddof=1) / pos + np.var(v01 - r01, ddof=1) / neg)
    if se > 0:
        p = math.erfc(abs(delta) / se / math.sqrt(2.0))
    else:
        p = 1.0 if delta == 0 else 0.0
    half = _Z95 * se
    return PairedAUC(a, b, delta, se, delta - half, delta + half, p, len(labels), pos, neg)

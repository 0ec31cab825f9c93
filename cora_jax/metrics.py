"""AUC and UAUC exactly as the reference defines them (cora-reference.md §7), vectorised.

AUC is the rank statistic (Mann-Whitney U / (P * N)) with tied scores given their average rank,
which equals scikit-learn's roc_auc_score. UAUC is the unweighted mean of per-user AUCs over users
with at least one positive and one negative row (a user with one row has one class and is skipped);
it is computed with one sort by (user, score) and segment sums, without a loop over users.
"""
from __future__ import annotations

import dataclasses

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

"""The build recipe: the month windows of each source, raw `Interactions`, and `assemble`, the core every source shares."""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from cora_jax.data.split import SPLIT_NAMES, DataError, Dataset, Split, gather_ranges, offsets_from_lengths


@dataclasses.dataclass(frozen=True)
class MonthWindows:
    """Month-based split of MovieLens-style data (docs/reference.md#ml-1m). Months are counted from an origin."""

    origin: str | None = None  # "YYYY-MM" of month 0; None = the month of the first rating (UTC)
    train: tuple[int, int] = (14, 23)  # inclusive month range of train (ML-1M: 2001-06 .. 2002-03)
    valid: tuple[int, int] = (24, 28)  # inclusive month range of valid (2002-04 .. 2002-08)
    test: tuple[int, int] = (29, 33)  # inclusive month range of test (2002-09 .. 2003-01)
    min_positive_rating: float = 4  # label = rating >= this
    valid_small_frac: float = 0.5  # valid_small = this fraction of valid
    seed: int = 2023  # RandomState seed of the valid_small sample


# ML-100K (RecBole or GroupLens): 1997-09-20 .. 1998-04-22, eight calendar months. Train = months
# 0..4 (1997-09 .. 1998-01, 67.0% of rows), valid = month 5 (1998-02, 11.0%), test = months 6..7
# (1998-03 .. 1998-04, 22.0%): the closest month boundaries to 2/3, 1/6, 1/6 of the span.
ML1M_WINDOWS = MonthWindows()
ML100K_WINDOWS = MonthWindows(origin="1997-09", train=(0, 4), valid=(5, 5), test=(6, 7))


@dataclasses.dataclass(frozen=True)
class AmazonWindows:
    """Amazon-Book recipe (docs/reference.md#amazon-book): one year, a month range for train, a held-out month halved."""

    year: int = 2017  # only reviews of this year (UTC) are kept
    min_count: int = 20  # keep users and items with MORE than this many ratings in the year (one pass)
    train_months: tuple[int, int] = (1, 11)  # inclusive calendar months of train
    holdout_month: int = 12  # sorted by time and halved: first half valid, second half test
    positive_rating: float = 5  # label = rating == this
    valid_small_frac: float = 0.25  # valid_small = this fraction of valid
    seed: int = 2023  # RandomState seed of the valid_small sample


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Raw rows in raw-file order, before numbering; n rows."""

    user: np.ndarray  # [n] raw user keys (int64, or object str)
    item: np.ndarray  # [n] raw item keys (int64, or object str)
    label: np.ndarray  # int32 [n] 0/1
    timestamp: np.ndarray  # int64 [n] unix seconds
    flag: np.ndarray  # int32 [n] -1 train, 0 valid, 1 test
    titles: dict  # raw item key -> title, for every item in `item`
    users_by: Literal["ascending", "appearance"] = "ascending"  # how users are numbered


def _first_appearance_ids(keys: np.ndarray) -> np.ndarray:
    """int64 [n]: ids 1.. in order of first appearance of each key in `keys`."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(uniq) + 1)
    return rank[inverse.reshape(-1)]


def assemble(x: Interactions, *, valid_small_frac: float, seed: int, domain: str) -> Dataset:
    """The recipe core shared by every source (docs/reference.md#data):

    1. stable sort by (user, timestamp): ties keep the raw file's order;
    2. users numbered 1.. in ascending raw id (MovieLens) or first appearance in the raw file
       (Amazon's string ids); items numbered 1.. in order of first appearance in the sorted rows;
    3. `his` = [0] + the user's earlier positive items (crossing splits), `his_title` their titles;
    4. `not_cold` = 1 when the row's user and item both occur in train;
    5. valid_small = valid.sample(frac, random_state=seed) as pandas draws it, i.e. the rows
       RandomState(seed).permutation(n)[:round(frac * n)] of valid, in that order.
    """
    if x.users_by == "ascending":
        _, user_rank = np.unique(x.user, return_inverse=True)
        user_rank = user_rank.reshape(-1) + 1
    else:
        user_rank = _first_appearance_ids(x.user)
    # stable two-pass sort = sort by (user, timestamp) with ties in raw order
    order = np.argsort(x.timestamp, kind="stable")
    order = order[np.argsort(user_rank[order], kind="stable")]
    uid = user_rank[order]
    item_keys = x.item[order]
    iid = _first_appearance_ids(item_keys)
    label = x.label[order].astype(np.int32)
    flag = x.flag[order].astype(np.int32)
    n = len(order)

    # titles: item id -> title of its raw key
    item_titles = np.full(int(iid.max(initial=0)) + 1, "", dtype=object)
    _, first = np.unique(iid, return_index=True)
    item_titles[iid[first]] = [x.titles[k] for k in item_keys[first].tolist()]

    # history of row j = [0] + positives of the same user before j (all splits)
    pos_before = np.cumsum(label) - label  # positives strictly before j, over all users
    user_start = np.r_[0, np.flatnonzero(np.diff(uid)) + 1]  # first row of each user's block
    block_of = np.repeat(np.arange(len(user_start)), np.diff(np.r_[user_start, n]))
    start_pos = pos_before[user_start][block_of]  # index in `positives` where the user's positives start
    n_before = pos_before - start_pos
    positives = iid[label == 1]
    lengths = n_before + 1
    offsets = offsets_from_lengths(lengths)
    his = np.zeros(int(offsets[-1]), np.int32)
    body = np.ones(len(his), bool)
    body[offsets[:-1]] = False
    his[body] = gather_ranges(positives, start_pos, n_before)

    train = flag == -1
    not_cold = (np.isin(uid, uid[train]) & np.isin(iid, iid[train])).astype(np.int32)
    full = Split(name="all", row=np.arange(n, dtype=np.int64), uid=uid.astype(np.int32),
                 iid=iid.astype(np.int32), label=label, timestamp=x.timestamp[order].astype(np.int64),
                 flag=flag, not_cold=not_cold, his_values=his, his_offsets=offsets)
    splits = {name: full.take(np.flatnonzero(flag == f), name) for name, f in (("train", -1), ("valid", 0), ("test", 1))}
    nv = len(splits["valid"])
    # as pandas draws it; at least one row so that tiny data still has a valid_small
    pick = np.random.RandomState(seed).permutation(nv)[: max(1, round(valid_small_frac * nv))]
    splits["valid_small"] = splits["valid"].take(pick, "valid_small")
    for name in SPLIT_NAMES:
        if len(splits[name]) == 0:
            raise DataError(None, None, None, f"the {name} split is empty: check the windows")
    return Dataset(root=None, splits={k: splits[k] for k in SPLIT_NAMES}, user_num=int(uid.max()) + 1,
                   item_num=len(item_titles), item_titles=item_titles, domain=domain)


def month_index(ts: np.ndarray) -> np.ndarray:
    """int64 [n]: year * 12 + month - 1 of each unix timestamp, in UTC."""
    months = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    return months + 1970 * 12


def month_flags(ts: np.ndarray, w: MonthWindows) -> np.ndarray:
    """int32 [n]: -1/0/1 for train/valid/test rows, 2 for rows outside every window."""
    m = month_index(ts)
    if w.origin is None:
        origin = int(m.min())
    else:
        year, month = (int(p) for p in w.origin.split("-"))
        origin = year * 12 + month - 1
    rel = m - origin
    flag = np.full(len(ts), 2, np.int32)
    for f, (lo, hi) in ((-1, w.train), (0, w.valid), (1, w.test)):
        flag[(rel >= lo) & (rel <= hi)] = f
    return flag

"""Build a CoLLM-layout split from raw ratings (docs/reference.md#data).

Every source reader turns its raw files into `Interactions` (raw keys, labels, timestamps, split
flags, titles) in raw-file order; `assemble` is the one recipe core they all share:

1. stable sort by (user, timestamp): ties keep the raw file's order;
2. users numbered 1.. in ascending raw id (MovieLens) or first appearance in the raw file
   (Amazon's string ids); items numbered 1.. in order of first appearance in the sorted rows;
3. `his` = [0] + the user's earlier positive items (crossing splits), `his_title` their titles;
4. `not_cold` = 1 when the row's user and item both occur in train;
5. valid_small = valid.sample(frac, random_state=seed) as pandas draws it, i.e. the rows
   RandomState(seed).permutation(n)[:round(frac * n)] of valid, in that order.

Sources: GroupLens ML-1M (`ratings.dat`, `movies.dat`), GroupLens ML-100K (`u.data`, `u.item`),
RecBole's ML-100K atomic files (`ml-100k.inter`, `ml-100k.item`, the embedded default) and Amazon
Review Data 2018 Books (`Books_5.json.gz`, `meta_Books.json.gz`, streamed line by line).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import os
import pathlib
import shutil
import tempfile
import zlib
from typing import Iterator, Literal

import numpy as np
from tqdm import tqdm

from cora_jax.assets import cache_dir, ml100k_recbole_dir
from cora_jax.data.split import (
    SPLIT_NAMES, DataError, Dataset, Split, gather_ranges, offsets_from_lengths, write_dataset,
)

RECIPE_VERSION = 1  # bump when the recipe changes, so cached builds are rebuilt
Source = Literal["ml-1m", "ml-100k", "ml-100k-recbole", "amazon-book"]


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
    """The recipe core shared by every source (see the module docstring)."""
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


# ----------------------------------------------------------------------------------------------
# Month windows


def _month_index(ts: np.ndarray) -> np.ndarray:
    """int64 [n]: year * 12 + month - 1 of each unix timestamp, in UTC."""
    months = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    return months + 1970 * 12


def month_flags(ts: np.ndarray, w: MonthWindows) -> np.ndarray:
    """int32 [n]: -1/0/1 for train/valid/test rows, 2 for rows outside every window."""
    m = _month_index(ts)
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


def _windowed(user, item, rating, ts, titles, w: MonthWindows, users_by="ascending") -> Interactions:
    flag = month_flags(ts, w)
    keep = flag != 2
    return Interactions(user=user[keep], item=item[keep], label=(rating[keep] >= w.min_positive_rating).astype(np.int32),
                        timestamp=ts[keep], flag=flag[keep], titles=titles, users_by=users_by)


# ----------------------------------------------------------------------------------------------
# Raw readers. Each checks the whole file before any numbering starts.


def _read_text(path: pathlib.Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(path, 1, None, "empty file")
    try:
        return data.decode(encoding).splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not valid {encoding}") from None


def _parse_columns(path, lines: list[str], sep: str, names: tuple[str, ...], kinds: str, first_line: int = 1,
                   positions: list[int] | None = None) -> list[list]:
    """Split each line by `sep`; column k is field positions[k] (default k), of kind kinds[k]:
    'i' (int), 'f' (number) or 's' (string). Blank lines are skipped."""
    positions = list(range(len(names))) if positions is None else positions
    need = max(positions) + 1
    cols: list[list] = [[] for _ in names]
    for lineno, line in enumerate(tqdm(lines, desc=f"read {path.name}", disable=len(lines) < 200_000,
                                       mininterval=1.0), start=first_line):
        if not line:
            continue
        parts = line.split(sep)
        if len(parts) < need:
            missing = next(names[k] for k, p in enumerate(positions) if p >= len(parts))
            raise DataError(path, lineno, missing,
                            f"expected {need} {sep!r}-separated fields, got {len(parts)}: {line[:80]!r}")
        for k, (kind, col) in enumerate(zip(kinds, cols)):
            v = parts[positions[k]]
            try:
                col.append(int(v) if kind == "i" else float(v) if kind == "f" else v)
            except ValueError:
                want = "an integer" if kind == "i" else "a number"
                raise DataError(path, lineno, names[k], f"expected {want}, got {v!r}") from None
    if not cols[0]:
        raise DataError(path, first_line, None, "no data rows")
    return cols


def _titles_for(items: np.ndarray, titles: dict, path, item_file, first_line: int = 1) -> None:
    """Every rated item must have a title (line numbers assume no blank lines)."""
    known = np.fromiter(titles, dtype=np.int64, count=len(titles))
    missing = ~np.isin(items, known)
    if missing.any():
        j = int(np.argmax(missing))
        raise DataError(path, j + first_line, "item", f"item {items[j]} has no title in {item_file}")


def read_ml1m(raw: pathlib.Path, w: MonthWindows = ML1M_WINDOWS) -> Interactions:
    """GroupLens ML-1M: ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat `MovieID::Title::Genres` (latin-1)."""
    movies = raw / "movies.dat"
    mcols = _parse_columns(movies, _read_text(movies, "latin-1"), "::", ("MovieID", "Title", "Genres"), "iss")
    titles = dict(zip(mcols[0], mcols[1]))
    ratings = raw / "ratings.dat"
    u, i, r, t = _parse_columns(ratings, _read_text(ratings, "latin-1"), "::",
                                ("UserID", "MovieID", "Rating", "Timestamp"), "iifi")
    item = np.asarray(i, np.int64)
    _titles_for(item, titles, ratings, movies.name)
    return _windowed(np.asarray(u, np.int64), item, np.asarray(r), np.asarray(t, np.int64), titles, w)


def read_ml100k(raw: pathlib.Path, w: MonthWindows = ML100K_WINDOWS) -> Interactions:
    """GroupLens ML-100K: u.data `user\\titem\\trating\\ttimestamp`, u.item `id|title|date|...` (latin-1)."""
    uitem = raw / "u.item"
    mcols = _parse_columns(uitem, _read_text(uitem, "latin-1"), "|", ("movie id", "movie title"), "is")
    titles = dict(zip(mcols[0], mcols[1]))
    udata = raw / "u.data"
    u, i, r, t = _parse_columns(udata, _read_text(udata, "latin-1"), "\t",
                                ("user id", "item id", "rating", "timestamp"), "iifi")
    item = np.asarray(i, np.int64)
    _titles_for(item, titles, udata, uitem.name)
    return _windowed(np.asarray(u, np.int64), item, np.asarray(r), np.asarray(t, np.int64), titles, w)


def recbole_title(name: str, year: str) -> str:
    """Render a RecBole ML-100K title like ML-1M / GroupLens: "Toy Story" + "1995" -> "Toy Story (1995)".

    RecBole stripped "(year)" from `movie_title` into `release_year`. The year is appended back when
    it is four digits and the name does not already end with it (item 1412 keeps "(1995)" in its
    name, with year "V"). RecBole's placeholder "unkonwn" (item 267, year "unkonwn") becomes
    "unknown", GroupLens' title of that item.
    """
    name = name.strip()
    if name == "unkonwn":
        return "unknown"
    if len(year) == 4 and year.isdigit() and not name.endswith(f"({year})"):
        return f"{name} ({year})"
    return name


def _atomic_header(path, header: str, want: tuple[str, ...]) -> list[int]:
    """Column positions of `want` in a RecBole atomic header `name:type\\tname:type...`."""
    names = [h.split(":")[0] for h in header.split("\t")]
    cols = []
    for field in want:
        if field not in names:
            raise DataError(path, 1, field, f"missing from the header {header[:120]!r} (not a RecBole atomic file?)")
        cols.append(names.index(field))
    return cols


def read_ml100k_recbole(raw: pathlib.Path | None = None, w: MonthWindows = ML100K_WINDOWS) -> Interactions:
    """RecBole atomic files ml-100k.inter (user_id, item_id, rating, timestamp) and ml-100k.item (UTF-8)."""
    raw = ml100k_recbole_dir() if raw is None else raw
    item_path, inter_path = raw / "ml-100k.item", raw / "ml-100k.inter"
    lines = _read_text(item_path, "utf-8")
    names = ("item_id", "movie_title", "release_year")
    ids, titles_, years = _parse_columns(item_path, lines[1:], "\t", names, "iss", first_line=2,
                                         positions=_atomic_header(item_path, lines[0], names))
    titles = {i: recbole_title(n, y) for i, n, y in zip(ids, titles_, years)}
    lines = _read_text(inter_path, "utf-8")
    names = ("user_id", "item_id", "rating", "timestamp")
    u, i, r, t = _parse_columns(inter_path, lines[1:], "\t", names, "iiff", first_line=2,
                                positions=_atomic_header(inter_path, lines[0], names))
    item = np.asarray(i, np.int64)
    _titles_for(item, titles, inter_path, item_path.name, first_line=2)
    return _windowed(np.asarray(u, np.int64), item, np.asarray(r), np.asarray(t).astype(np.int64), titles, w)


def _json_lines(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """Stream (line number, object) from a gzip JSON Lines file, one line in memory at a time."""
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    n = 0
    try:
        with gzip.open(path, "rb") as fh:
            for n, raw in enumerate(fh, start=1):
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(path, n, None, f"malformed JSON: {e}") from None
                if type(obj) is not dict:
                    raise DataError(path, n, None, "expected a JSON object")
                yield n, obj
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(path, n + 1, None, f"not a readable gzip file ({e})") from None
    if n == 0:
        raise DataError(path, 1, None, "empty file")


def read_amazon_book(raw: pathlib.Path, w: AmazonWindows = AmazonWindows()) -> Interactions:
    """Amazon Review Data 2018 Books: Books_5.json.gz (reviewerID, asin, overall, unixReviewTime) joined
    with meta_Books.json.gz (asin, title). Both are streamed; only the kept year's rows are held."""
    reviews, meta = raw / "Books_5.json.gz", raw / "meta_Books.json.gz"
    year_lo = int(dt.datetime(w.year, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    year_hi = int(dt.datetime(w.year + 1, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    users, items, ratings, times = [], [], [], []
    for n, obj in tqdm(_json_lines(reviews), desc=f"read {reviews.name}", unit=" lines", mininterval=2.0):
        u, a, r, t = obj.get("reviewerID"), obj.get("asin"), obj.get("overall"), obj.get("unixReviewTime")
        if u is None or a is None or r is None or t is None:
            continue  # the recipe drops rows with missing fields
        for field, v, ok in (("reviewerID", u, type(u) is str), ("asin", a, type(a) is str),
                             ("overall", r, type(r) in (int, float)), ("unixReviewTime", t, type(t) is int)):
            if not ok:
                raise DataError(reviews, n, field, f"unexpected type {type(v).__name__}: {v!r}")
        if year_lo <= t < year_hi:
            users.append(u), items.append(a), ratings.append(r), times.append(t)
    needed = set(items)
    titles: dict[str, str] = {}
    for n, obj in tqdm(_json_lines(meta), desc=f"read {meta.name}", unit=" lines", mininterval=2.0):
        a, title = obj.get("asin"), obj.get("title")
        if a in needed and title is not None:
            if type(title) is not str:
                raise DataError(meta, n, "title", f"expected a string, got {type(title).__name__}")
            if title.strip():
                titles.setdefault(a, title)
    user = np.asarray(users, dtype=object)
    item = np.asarray(items, dtype=object)
    ts = np.asarray(times, np.int64)
    rating = np.asarray(ratings, np.float64)
    has_title = np.fromiter((a in titles for a in items), bool, len(items))
    user, item, ts, rating = user[has_title], item[has_title], ts[has_title], rating[has_title]
    # one pass of filtering on the year's counts: users and items with more than min_count ratings
    _, uinv, ucount = np.unique(user, return_inverse=True, return_counts=True)
    _, iinv, icount = np.unique(item, return_inverse=True, return_counts=True)
    keep = (ucount[uinv.reshape(-1)] > w.min_count) & (icount[iinv.reshape(-1)] > w.min_count)
    user, item, ts, rating = user[keep], item[keep], ts[keep], rating[keep]
    month = _month_index(ts) - w.year * 12 + 1  # calendar month 1..12
    flag = np.full(len(ts), 2, np.int32)
    flag[(month >= w.train_months[0]) & (month <= w.train_months[1])] = -1
    hold = np.flatnonzero(month == w.holdout_month)
    hold = hold[np.argsort(ts[hold], kind="stable")]
    flag[hold[: len(hold) // 2]] = 0
    flag[hold[len(hold) // 2 :]] = 1
    keep = flag != 2
    return Interactions(user=user[keep], item=item[keep], label=(rating[keep] == w.positive_rating).astype(np.int32),
                        timestamp=ts[keep], flag=flag[keep], titles=titles, users_by="appearance")


# ----------------------------------------------------------------------------------------------
# Entry points


def default_windows(source: Source) -> MonthWindows | AmazonWindows:
    return {"ml-1m": ML1M_WINDOWS, "ml-100k": ML100K_WINDOWS, "ml-100k-recbole": ML100K_WINDOWS,
            "amazon-book": AmazonWindows()}[source]


def build_dataset(source: Source, raw: str | pathlib.Path | None = None,
                  windows: MonthWindows | AmazonWindows | None = None) -> Dataset:
    """Read a raw source and apply the recipe; `raw=None` only for ml-100k-recbole (the installed wheel)."""
    w = default_windows(source) if windows is None else windows
    if raw is None and source != "ml-100k-recbole":
        raise ValueError(f"--raw is required for source {source!r}")
    raw_path = None if raw is None else pathlib.Path(raw)
    readers = {"ml-1m": read_ml1m, "ml-100k": read_ml100k, "ml-100k-recbole": read_ml100k_recbole,
               "amazon-book": read_amazon_book}
    x = readers[source](raw_path, w)
    return assemble(x, valid_small_frac=w.valid_small_frac, seed=w.seed,
                    domain="book" if source == "amazon-book" else "movie")


def build_to(source: Source, out: str | pathlib.Path, raw: str | pathlib.Path | None = None,
             windows: MonthWindows | AmazonWindows | None = None) -> tuple[pathlib.Path, Dataset]:
    """Build and write atomically: into a temporary sibling folder, then renamed to `out`.
    Returns the folder and the dataset built in memory."""
    w = default_windows(source) if windows is None else windows
    ds = build_dataset(source, raw, w)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_dataset(ds, tmp, {"source": source, "raw": None if raw is None else str(raw),
                                "windows": dataclasses.asdict(w), "recipe_version": RECIPE_VERSION})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out, ds


def _is_current_build(path: pathlib.Path) -> bool:
    meta = path / "BUILD.json"
    if not all((path / f"{n}.jsonl.gz").is_file() for n in SPLIT_NAMES) or not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("recipe_version") == RECIPE_VERSION
    except (json.JSONDecodeError, OSError):
        return False


def ensure_ml100k() -> pathlib.Path:
    """The embedded ML-100K split (from the recbole wheel), built once into cache_dir()/"ml-100k".

    Override the cache folder with $CORA_JAX_CACHE. Rebuilt when missing or built by an older recipe.
    """
    out = cache_dir() / "ml-100k"
    if not _is_current_build(out):
        build_to("ml-100k-recbole", out)
    return out

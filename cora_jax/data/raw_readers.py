"""Readers of the raw sources (GroupLens ML-1M / ML-100K, RecBole ML-100K, Amazon 2018 Books) into `Interactions`."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import pathlib
import zlib
from typing import Iterator

import numpy as np
from tqdm import tqdm

from cora_jax.data.recipe import ML1M_WINDOWS, ML100K_WINDOWS, AmazonWindows, Interactions, MonthWindows, month_flags, month_index
from cora_jax.data.split import DataError

# Every reader checks its whole file before any numbering starts.


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


def _windowed_ratings(cols: list[list], titles: dict, w: MonthWindows, ratings: pathlib.Path, titles_file: str,
              first_line: int = 1) -> Interactions:
    """MovieLens rating columns (user, item, rating, timestamp) cut to the month windows; every rated item
    must have a title (error line numbers assume no blank lines)."""
    u, i, r, t = cols
    item = np.asarray(i, np.int64)
    missing = ~np.isin(item, np.fromiter(titles, dtype=np.int64, count=len(titles)))
    if missing.any():
        j = int(np.argmax(missing))
        raise DataError(ratings, j + first_line, "item", f"item {item[j]} has no title in {titles_file}")
    user, rating, ts = np.asarray(u, np.int64), np.asarray(r), np.asarray(t).astype(np.int64)
    flag = month_flags(ts, w)
    keep = flag != 2
    return Interactions(user=user[keep], item=item[keep], label=(rating[keep] >= w.min_positive_rating).astype(np.int32),
                        timestamp=ts[keep], flag=flag[keep], titles=titles)


def _read_grouplens(raw: pathlib.Path, movies: tuple[str, str, tuple[str, ...]],
                    ratings: tuple[str, str, tuple[str, ...]], w: MonthWindows) -> Interactions:
    """A GroupLens release: two latin-1 tables, each (file name, separator, field names); movies start with
    (id, title), ratings are (user, item, rating, timestamp)."""
    (movies_name, movies_sep, movie_fields), (ratings_name, ratings_sep, rating_fields) = movies, ratings
    movies_path, ratings_path = raw / movies_name, raw / ratings_name
    mcols = _parse_columns(movies_path, _read_text(movies_path, "latin-1"), movies_sep, movie_fields,
                           "i" + "s" * (len(movie_fields) - 1))
    cols = _parse_columns(ratings_path, _read_text(ratings_path, "latin-1"), ratings_sep, rating_fields, "iifi")
    return _windowed_ratings(cols, dict(zip(mcols[0], mcols[1])), w, ratings_path, movies_name)


def read_ml1m(raw: pathlib.Path, w: MonthWindows = ML1M_WINDOWS) -> Interactions:
    """GroupLens ML-1M: ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat `MovieID::Title::Genres` (latin-1)."""
    return _read_grouplens(raw, ("movies.dat", "::", ("MovieID", "Title", "Genres")),
                           ("ratings.dat", "::", ("UserID", "MovieID", "Rating", "Timestamp")), w)


def read_ml100k(raw: pathlib.Path, w: MonthWindows = ML100K_WINDOWS) -> Interactions:
    """GroupLens ML-100K: u.data `user\\titem\\trating\\ttimestamp`, u.item `id|title|date|...` (latin-1)."""
    return _read_grouplens(raw, ("u.item", "|", ("movie id", "movie title")),
                           ("u.data", "\t", ("user id", "item id", "rating", "timestamp")), w)


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


def read_ml100k_recbole(raw: pathlib.Path, w: MonthWindows = ML100K_WINDOWS) -> Interactions:
    """RecBole atomic files ml-100k.inter (user_id, item_id, rating, timestamp) and ml-100k.item (UTF-8)."""
    item_path, inter_path = raw / "ml-100k.item", raw / "ml-100k.inter"
    lines = _read_text(item_path, "utf-8")
    names = ("item_id", "movie_title", "release_year")
    ids, titles_, years = _parse_columns(item_path, lines[1:], "\t", names, "iss", first_line=2,
                                         positions=_atomic_header(item_path, lines[0], names))
    titles = {i: recbole_title(n, y) for i, n, y in zip(ids, titles_, years)}
    lines = _read_text(inter_path, "utf-8")
    names = ("user_id", "item_id", "rating", "timestamp")
    cols = _parse_columns(inter_path, lines[1:], "\t", names, "iiff", first_line=2,
                          positions=_atomic_header(inter_path, lines[0], names))
    return _windowed_ratings(cols, titles, w, inter_path, item_path.name, first_line=2)


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
    month = month_index(ts) - w.year * 12 + 1  # calendar month 1..12
    flag = np.full(len(ts), 2, np.int32)
    flag[(month >= w.train_months[0]) & (month <= w.train_months[1])] = -1
    hold = np.flatnonzero(month == w.holdout_month)
    hold = hold[np.argsort(ts[hold], kind="stable")]
    flag[hold[: len(hold) // 2]] = 0
    flag[hold[len(hold) // 2 :]] = 1
    keep = flag != 2
    return Interactions(user=user[keep], item=item[keep], label=(rating[keep] == w.positive_rating).astype(np.int32),
                        timestamp=ts[keep], flag=flag[keep], titles=titles, users_by="appearance")


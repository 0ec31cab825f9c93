"""Read and validate a CoLLM-layout split folder into a `Dataset`, naming the file, line and field of any problem."""
from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import zlib
from typing import Any

import numpy as np

from cora_jax.data.split import FLAG_OF, SPLIT_NAMES, DataError, Dataset, Split, gather_ranges, offsets_from_lengths

FIELDS = ("row", "uid", "iid", "label", "timestamp", "his", "his_title", "title", "flag", "not_cold")
MAX_ID = 2**31 - 1  # ids are stored as int32


@dataclasses.dataclass
class _RawFile:
    """One file's columns while loading, with the line number of every row for error messages."""

    path: pathlib.Path
    lines: np.ndarray  # int64 [n]
    cols: dict[str, np.ndarray]  # scalar fields, int64 [n]
    titles: list[str]  # [n]
    his_flat: list[Any]  # every history entry, concatenated
    his_title_flat: list[Any]
    his_len: np.ndarray  # int64 [n]


_FIELD_SET = frozenset(FIELDS)
_INT_FIELDS = ("row", "uid", "iid", "label", "timestamp", "not_cold")


def _locate_bad_utf8(path, lineno: int, raw: bytes) -> DataError:
    """Name the field that holds the undecodable bytes (parse with surrogate escapes)."""
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return DataError(path, lineno, None, "line is not valid UTF-8")
    for key, value in obj.items() if isinstance(obj, dict) else ():
        if any("\udc80" <= ch <= "\udcff" for ch in json.dumps(value, ensure_ascii=False)):
            return DataError(path, lineno, key, "not valid UTF-8")
    return DataError(path, lineno, None, "line is not valid UTF-8")


def _check_int(path, lineno, key, value, lo: int, hi: int) -> None:
    if type(value) is not int:
        raise DataError(path, lineno, key, f"expected an integer, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise DataError(path, lineno, key, f"{value} is out of range [{lo}, {hi}]")


def _read_file(path: pathlib.Path, split_name: str) -> _RawFile:
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    expected_flag = FLAG_OF[split_name]
    ranges = {"row": (0, 2**63 - 1), "uid": (1, MAX_ID), "iid": (1, MAX_ID), "label": (0, 1),
              "timestamp": (-(2**63), 2**63 - 1), "not_cold": (0, 1)}
    lines, titles, his_flat, his_title_flat, his_len = [], [], [], [], []
    cols: dict[str, list[int]] = {k: [] for k in _INT_FIELDS}
    try:
        with gzip.open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _locate_bad_utf8(path, lineno, raw) from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, lineno, None, f"malformed JSON: {e}") from None
                if type(obj) is not dict:
                    raise DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
                if obj.keys() != _FIELD_SET:
                    missing = [k for k in FIELDS if k not in obj]
                    if missing:
                        raise DataError(path, lineno, missing[0], "missing")
                    extra = sorted(set(obj) - set(FIELDS))
                    raise DataError(path, lineno, extra[0], "unexpected field")
                for key in _INT_FIELDS:
                    value = obj[key]
                    lo, hi = ranges[key]
                    if type(value) is not int or not lo <= value <= hi:
                        _check_int(path, lineno, key, value, lo, hi)
                    cols[key].append(value)
                flag = obj["flag"]
                # The shared files store flag as a float (-1.0): accept integral numbers only.
                if type(flag) not in (int, float) or flag != expected_flag:
                    raise DataError(path, lineno, "flag", f"expected {expected_flag} in {path.name}, got {flag!r}")
                title = obj["title"]
                if type(title) is not str:
                    raise DataError(path, lineno, "title", f"expected a string, got {type(title).__name__}")
                his, his_title = obj["his"], obj["his_title"]
                if type(his) is not list or not his:
                    raise DataError(path, lineno, "his", "expected a non-empty list starting with the padding id 0")
                if type(his_title) is not list:
                    raise DataError(path, lineno, "his_title", f"expected a list, got {type(his_title).__name__}")
                if len(his) != len(his_title):
                    raise DataError(path, lineno, "his_title", f"has {len(his_title)} entries but his has {len(his)}")
                if his[0] != 0 or type(his[0]) is not int:
                    raise DataError(path, lineno, "his", f"must start with the padding id 0, starts with {his[0]!r}")
                if his_title[0] != "":
                    raise DataError(path, lineno, "his_title", f"must start with the padding title \"\", starts with {his_title[0]!r}")
                lines.append(lineno)
                titles.append(title)
                his_flat.extend(his)
                his_title_flat.extend(his_title)
                his_len.append(len(his))
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, None, None, f"not a readable gzip JSON Lines file ({e})") from None
    if not lines:
        raise DataError(path, 1, None, "empty file: expected one JSON object a line")
    return _RawFile(path, np.asarray(lines, np.int64), {k: np.asarray(v, np.int64) for k, v in cols.items()},
                    titles, his_flat, his_title_flat, np.asarray(his_len, np.int64))


def _row_of_position(f: _RawFile, pos: int) -> tuple[int, int]:
    """(row index, index within its history) of a flat history position."""
    ends = np.cumsum(f.his_len)
    r = int(np.searchsorted(ends, pos, side="right"))
    return r, pos - int(ends[r] - f.his_len[r])


def _check_histories(f: _RawFile) -> np.ndarray:
    """int64 flat history ids, after checking their types and ranges."""
    vals = np.array(f.his_flat) if f.his_flat else np.zeros(0, np.int64)
    types_ok = vals.dtype.kind == "i" and set(map(type, f.his_flat)) == {int}
    if not types_ok:
        pos = next(p for p, v in enumerate(f.his_flat) if type(v) is not int)
        r, k = _row_of_position(f, pos)
        raise DataError(f.path, int(f.lines[r]), f"his[{k}]", f"expected an integer id, got {f.his_flat[pos]!r}")
    starts = np.cumsum(f.his_len) - f.his_len
    bad = (vals < 1) | (vals > MAX_ID)
    bad[starts] = False  # the padding 0 is checked per line
    if bad.any():
        pos = int(np.argmax(bad))
        r, k = _row_of_position(f, pos)
        raise DataError(f.path, int(f.lines[r]), f"his[{k}]", f"item id {int(vals[pos])} is out of range [1, {MAX_ID}]")
    if set(map(type, f.his_title_flat)) != {str}:
        pos = next(p for p, v in enumerate(f.his_title_flat) if type(v) is not str)
        r, k = _row_of_position(f, pos)
        raise DataError(f.path, int(f.lines[r]), f"his_title[{k}]", f"expected a string, got {f.his_title_flat[pos]!r}")
    return vals


def _check_titles(files: list[_RawFile], his_vals: list[np.ndarray], item_num: int) -> np.ndarray:
    """One title per item id, consistent across targets and histories; returns item_titles [item_num]."""
    titles = np.full(item_num, None, dtype=object)
    where = np.full((item_num, 2), -1, dtype=np.int64)  # (file index, line) that set the title

    def merge(fi: int, ids: np.ndarray, new: np.ndarray, lines: np.ndarray, field: str, k_of=None):
        unset = titles[ids] == None  # noqa: E711 (elementwise on an object array)
        # first occurrence of every unset id in this batch defines its title
        _, first = np.unique(ids[unset], return_index=True)
        sel = np.flatnonzero(unset)[first]
        titles[ids[sel]] = new[sel]
        where[ids[sel]] = np.stack([np.full(len(sel), fi), lines[sel]], axis=1)
        conflict = titles[ids] != new
        if conflict.any():
            p = int(np.argmax(conflict))
            i = int(ids[p])
            sfi, sline = where[i]
            label = field if k_of is None else f"{field}[{k_of(p)}]"
            raise DataError(files[fi].path, int(lines[p]), label,
                            f"title {new[p]!r} of item {i} conflicts with {titles[i]!r} "
                            f"({files[sfi].path.name}:{sline})")

    for fi, f in enumerate(files):
        merge(fi, f.cols["iid"], np.array(f.titles, dtype=object), f.lines, "title")
    for fi, (f, vals) in enumerate(zip(files, his_vals)):
        real = vals > 0
        flat_titles = np.array(f.his_title_flat, dtype=object)
        row_of = np.repeat(np.arange(len(f.lines)), f.his_len)
        pos = np.flatnonzero(real)
        merge(fi, vals[real], flat_titles[real], f.lines[row_of[real]], "his_title",
              k_of=lambda p, f=f, pos=pos: _row_of_position(f, int(pos[p]))[1])
    titles[titles == None] = ""  # noqa: E711
    titles[0] = ""
    return titles


def load_dataset(path: str | pathlib.Path, domain: str | None = None) -> Dataset:
    """Read and validate {train,valid,valid_small,test}.jsonl.gz in `path`.

    Each line is one JSON object with the keys of FIELDS (docs/reference.md#split-files). Besides every
    line, the cross-file invariants are checked (one title per item, valid_small a sample of valid,
    not_cold, unique rows); any problem raises `DataError` naming the file, the line and the field.

    domain: "movie" | "book"; None reads it from BUILD.json when present, else "movie".
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(root, None, None, "not a folder holding train/valid/valid_small/test .jsonl.gz: build it from "
                                          "GroupLens' ratings.dat + movies.dat with `python -m cora_jax.data build --source "
                                          f"ml-1m --raw PATH/TO/ml-1m --out {root}`, or set CORA_DATA to the folder that "
                                          "holds ml-1m-collm")
    if domain is None:
        meta = root / "BUILD.json"
        domain = json.loads(meta.read_text()).get("domain", "movie") if meta.is_file() else "movie"
    files = [_read_file(root / f"{name}.jsonl.gz", name) for name in SPLIT_NAMES]
    his_vals = [_check_histories(f) for f in files]

    # rows: unique over train/valid/test; valid_small must be a sample of valid with equal content
    main = [f for f, n in zip(files, SPLIT_NAMES) if n != "valid_small"]
    rows = np.concatenate([f.cols["row"] for f in main])
    uniq, first, counts = np.unique(rows, return_index=True, return_counts=True)
    if (counts > 1).any():
        r = int(uniq[np.argmax(counts > 1)])
        dup = np.flatnonzero(rows == r)[1]
        fi = int(np.searchsorted(np.cumsum([len(f.lines) for f in main]), dup, side="right"))
        local = dup - sum(len(f.lines) for f in main[:fi])
        raise DataError(main[fi].path, int(main[fi].lines[local]), "row", f"row {r} occurs twice")
    valid, small = files[1], files[2]
    order = np.argsort(valid.cols["row"])
    pos = np.searchsorted(valid.cols["row"], small.cols["row"], sorter=order)
    pos = order[np.minimum(pos, len(order) - 1)]
    missing = valid.cols["row"][pos] != small.cols["row"]
    if missing.any():
        j = int(np.argmax(missing))
        raise DataError(small.path, int(small.lines[j]), "row", f"row {int(small.cols['row'][j])} is not in valid")
    for key in ("uid", "iid", "label", "timestamp", "not_cold"):
        diff = valid.cols[key][pos] != small.cols[key]
        if diff.any():
            j = int(np.argmax(diff))
            raise DataError(small.path, int(small.lines[j]), key, "differs from the same row in valid")
    v_off = offsets_from_lengths(valid.his_len)
    v_his = gather_ranges(his_vals[1], v_off[:-1][pos], valid.his_len[pos])
    bad_len = valid.his_len[pos] != small.his_len
    if bad_len.any() or not np.array_equal(v_his, his_vals[2]):
        j = int(np.argmax(bad_len)) if bad_len.any() else _row_of_position(small, int(np.argmax(v_his != his_vals[2])))[0]
        raise DataError(small.path, int(small.lines[j]), "his", "differs from the same row in valid")

    user_num = int(max(f.cols["uid"].max() for f in files)) + 1
    item_num = int(max(max(f.cols["iid"].max(), v.max(initial=0)) for f, v in zip(files, his_vals))) + 1
    item_titles = _check_titles(files, his_vals, item_num)

    # not_cold: user and item both in train
    train = files[0]
    train_users, train_items = np.unique(train.cols["uid"]), np.unique(train.cols["iid"])
    for f in files:
        want = np.isin(f.cols["uid"], train_users) & np.isin(f.cols["iid"], train_items)
        diff = want.astype(np.int64) != f.cols["not_cold"]
        if diff.any():
            j = int(np.argmax(diff))
            raise DataError(f.path, int(f.lines[j]), "not_cold",
                            f"is {int(f.cols['not_cold'][j])}, but the user and item "
                            f"{'both' if want[j] else 'do not both'} occur in train")

    splits = {}
    for name, f, vals in zip(SPLIT_NAMES, files, his_vals):
        c = f.cols
        splits[name] = Split(
            name=name, row=c["row"], uid=c["uid"].astype(np.int32), iid=c["iid"].astype(np.int32),
            label=c["label"].astype(np.int32), timestamp=c["timestamp"],
            flag=np.full(len(f.lines), FLAG_OF[name], np.int32), not_cold=c["not_cold"].astype(np.int32),
            his_values=vals.astype(np.int32), his_offsets=offsets_from_lengths(f.his_len),
        )
    return Dataset(root=root, splits=splits, user_num=user_num, item_num=item_num,
                   item_titles=item_titles, domain=domain)


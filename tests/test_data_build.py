"""The recipe core (assemble) and every raw reader, on the shared ML-1M split and on small raw files."""
import datetime as dt
import functools
import gzip
import json
import os

import numpy as np
import pytest

from cora_jax.data import AmazonWindows, DataError, Interactions, MonthWindows, assemble, build_dataset, load_dataset
from cora_jax.data import build as build_mod
from cora_jax.data.raw_readers import recbole_title
from cora_jax.data.recipe import month_flags
from cora_jax.data.split import SPLIT_NAMES
from cora_jax.data.write import split_jsonl

COLUMNS = ("row", "uid", "iid", "label", "timestamp", "flag", "not_cold", "his_values", "his_offsets")


@functools.lru_cache(maxsize=1)
def _shared(path):
    return load_dataset(path)


def _reduced_rows(ds):
    """The shared split's train+valid+test reduced to (row, uid, iid, label, timestamp, flag), in row order."""
    parts = [ds.splits[n] for n in ("train", "valid", "test")]
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("row", "uid", "iid", "label", "timestamp", "flag")}
    order = np.argsort(cat["row"])
    return {k: v[order] for k, v in cat.items()}


def _assert_same(built, shared):
    assert built.user_num == shared.user_num and built.item_num == shared.item_num
    assert list(built.item_titles) == list(shared.item_titles)
    for name in SPLIT_NAMES:
        for col in COLUMNS:
            assert np.array_equal(getattr(built.splits[name], col), getattr(shared.splits[name], col)), (name, col)


def test_rebuild_ml1m_from_reduced_rows(ml1m_dir):
    """his, his_title, not_cold and valid_small (rows and order) rebuilt from (row, uid, iid, label, timestamp,
    title, flag) alone equal the shared files for all 51,623 rows; raw keys are scrambled so numbering is exercised."""
    shared = _shared(ml1m_dir)
    r = _reduced_rows(shared)
    assert len(r["row"]) == 51623 and np.array_equal(r["row"], np.arange(51623))
    raw_item = np.random.default_rng(0).permutation(100_000)[: shared.item_num] + 1  # raw movie key of each iid
    titles = {int(raw_item[i]): shared.item_titles[i] for i in range(1, shared.item_num)}
    x = Interactions(user=r["uid"].astype(np.int64) * 3 + 7, item=raw_item[r["iid"]], label=r["label"],
                     timestamp=r["timestamp"], flag=r["flag"], titles=titles)
    built = assemble(x, valid_small_frac=0.5, seed=2023, domain="movie")
    _assert_same(built, shared)
    # valid_small = valid.sample(frac=0.5, random_state=2023): RandomState permutation order, not sorted
    vs = built.splits["valid_small"].row
    assert len(vs) == 5200 and not np.all(np.diff(vs) > 0)
    # the writer reproduces the shared text byte for byte (key order, float flag, raw UTF-8 titles)
    for name in ("test", "valid_small"):
        with gzip.open(ml1m_dir / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            assert split_jsonl(built, built.splits[name]) == fh.read(), name


def _utc(y, m, d=1):
    return int(dt.datetime(y, m, d, tzinfo=dt.timezone.utc).timestamp())


def test_ml1m_raw_files_in_row_order_rebuild_the_split(ml1m_dir, tmp_path):
    """ratings.dat written in the split's row order (ties included) + rows outside the windows -> the split."""
    shared = _shared(ml1m_dir)
    r = _reduced_rows(shared)
    raw_item = np.random.default_rng(1).permutation(5000)[: shared.item_num] + 1
    rating = np.where(r["label"] == 1, 4 + r["row"] % 2, 1 + r["row"] % 3)  # 4/5 positive, 1..3 negative
    lines = ["1::%d::5::%d" % (raw_item[1], _utc(2000, 4, 25))]  # month 0 (sets the origin), dropped
    lines += ["%d::%d::%d::%d" % (u * 2 + 10, raw_item[i], s, t)
              for u, i, s, t in zip(r["uid"], r["iid"], rating, r["timestamp"])]
    lines.append("12::%d::4::%d" % (raw_item[2], _utc(2003, 2, 3)))  # month 34, dropped
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{raw_item[i]}::{shared.item_titles[i]}::Drama" for i in range(1, shared.item_num)]
    movies.append("99999::Unrated Film (1990)::Comedy")
    (tmp_path / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    _assert_same(build_dataset("ml-1m", tmp_path), shared)


def _assemble_small(users, items, labels, ts, flags, titles=None, **kw):
    titles = titles or {i: f"T{i}" for i in set(items)}
    x = Interactions(user=np.array(users), item=np.array(items), label=np.array(labels), timestamp=np.array(ts),
                     flag=np.array(flags), titles=titles, **kw)
    return assemble(x, valid_small_frac=0.5, seed=2023, domain="movie")


def test_assemble_ties_keep_raw_order_and_history_crosses_splits():
    # user 9 rates items 30 and 20 at the same second: raw order (30 first) must be kept
    ds = _assemble_small(users=[9, 9, 5, 9, 9], items=[30, 20, 20, 40, 50], labels=[1, 1, 0, 1, 0],
                         ts=[10, 10, 5, 20, 30], flags=[-1, -1, -1, 0, 1])
    tr, va, te = ds["train"], ds["valid"], ds["test"]
    # users by ascending raw id (5 -> 1, 9 -> 2); items by first appearance in sorted rows (20, 30, 40, 50)
    assert tr.uid.tolist() == [1, 2, 2] and tr.iid.tolist() == [1, 2, 1]
    assert [tr.history(j).tolist() for j in range(3)] == [[0], [0], [0, 2]]
    assert va.history(0).tolist() == [0, 2, 1] and te.history(0).tolist() == [0, 2, 1, 3]
    assert te.not_cold.tolist() == [0] and va.not_cold.tolist() == [0]
    assert list(ds.item_titles) == ["", "T20", "T30", "T40", "T50"]
    # users numbered by first appearance (Amazon's string ids)
    ds = _assemble_small(users=["b", "a", "b"], items=["x", "y", "y"], labels=[1, 1, 0], ts=[1, 2, 3],
                         flags=[-1, 0, 1], users_by="appearance")
    assert ds["train"].uid.tolist() == [1] and ds["valid"].uid.tolist() == [2] and ds["test"].uid.tolist() == [1]
    assert ds["test"].history(0).tolist() == [0, 1]


def test_assemble_rejects_an_empty_split():
    with pytest.raises(DataError, match="test split is empty"):
        _assemble_small(users=[1, 1], items=[1, 2], labels=[1, 0], ts=[1, 2], flags=[-1, 0])


def test_month_windows():
    ts = np.array([_utc(2000, 4, 30), _utc(2001, 6, 1), _utc(2002, 3, 31) + 86399, _utc(2002, 4, 1), _utc(2003, 1, 31),
                   _utc(2003, 2, 1)])
    assert month_flags(ts, MonthWindows()).tolist() == [2, -1, -1, 0, 1, 2]
    w = MonthWindows(origin="2001-06", train=(0, 0), valid=(1, 9), test=(10, 19))
    assert month_flags(ts, w).tolist() == [2, -1, 0, 1, 1, 2]


def test_ml100k_grouplens_reader(tmp_path):
    rows = [(3, 10, 4, _utc(1997, 9, 21)), (1, 11, 5, _utc(1997, 10, 2)), (1, 10, 2, _utc(1997, 10, 2)),
            (3, 11, 1, _utc(1998, 2, 3)), (1, 12, 4, _utc(1998, 3, 9)), (2, 12, 3, _utc(1998, 4, 1))]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "u.item").write_bytes("10|Misérables, Les (1995)|01-Jan-1995||http://x|0|1\n11|Heat (1995)|x\n"
                                      "12|Fargo (1996)|y\n".encode("latin-1"))
    ds = build_dataset("ml-100k", tmp_path)
    assert [len(ds[n]) for n in ("train", "valid", "test")] == [3, 1, 2]
    assert list(ds.item_titles) == ["", "Heat (1995)", "Misérables, Les (1995)", "Fargo (1996)"]
    tr = ds["train"]
    assert tr.uid.tolist() == [1, 1, 3] and tr.iid.tolist() == [1, 2, 2] and tr.label.tolist() == [1, 0, 1]
    assert ds["test"].history(0).tolist() == [0, 1] and ds["test"].label.tolist() == [1, 0]
    assert ds["test"].not_cold.tolist() == [0, 0] and ds["valid"].not_cold.tolist() == [1]


def test_recbole_reader_and_titles(tmp_path):
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation\n267\tunkonwn\tunkonwn\tunknown\n"
        "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n", encoding="utf-8")
    # columns in another order than usual: read by header name
    (tmp_path / "ml-100k.inter").write_text(
        "timestamp:float\tuser_id:token\titem_id:token\trating:float\n"
        f"{_utc(1997, 9, 20)}\t7\t1\t4\n{_utc(1997, 12, 1)}\t7\t267\t3\n{_utc(1998, 2, 2)}\t7\t1412\t5\n"
        f"{_utc(1998, 4, 2)}\t8\t1\t4.0\n", encoding="utf-8")
    ds = build_dataset("ml-100k-recbole", tmp_path)
    assert list(ds.item_titles) == ["", "Toy Story (1995)", "unknown", "Land Before Time III: The Time of the Great Giving (1995)"]
    assert [len(ds[n]) for n in ("train", "valid", "test")] == [2, 1, 1]
    assert ds["valid"].history(0).tolist() == [0, 1] and ds["test"].uid.tolist() == [2]
    assert recbole_title("Heat", "1995") == "Heat (1995)"


def _gz_lines(path, objs):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for o in objs:
            fh.write((o if isinstance(o, str) else json.dumps(o)) + "\n")


def test_amazon_reader(tmp_path):
    rng = np.random.default_rng(0)
    reviews = []
    users, books = ["u1", "u2", "u3"], ["b1", "b2", "b3"]
    for month in range(1, 13):
        for u in users:
            for b in books:
                reviews.append({"reviewerID": u, "asin": b, "overall": float(rng.integers(1, 6)),
                                "unixReviewTime": _utc(2017, month, 1 + users.index(u) + 3 * books.index(b))})
    reviews.append({"reviewerID": "u1", "asin": "b1", "overall": 5.0, "unixReviewTime": _utc(2016, 5, 1)})  # other year
    reviews.append({"reviewerID": "u9", "asin": "b1", "overall": 5.0, "unixReviewTime": _utc(2017, 5, 1)})  # rare user
    reviews.append({"reviewerID": "u2", "asin": "b9", "overall": 5.0, "unixReviewTime": _utc(2017, 5, 1)})  # no title
    reviews.append({"reviewerID": "u2", "asin": "b1", "unixReviewTime": _utc(2017, 5, 2)})  # missing rating
    _gz_lines(tmp_path / "Books_5.json.gz", reviews)
    _gz_lines(tmp_path / "meta_Books.json.gz", [{"asin": "b1", "title": "Dune"}, {"asin": "b2", "title": "Emma"},
                                                {"asin": "b3", "title": "Ulysses"}, {"asin": "b9"}])
    ds = build_dataset("amazon-book", tmp_path, AmazonWindows(min_count=2))
    assert ds.domain == "book" and sorted(ds.item_titles[1:]) == ["Dune", "Emma", "Ulysses"]
    assert (len(ds["train"]), len(ds["valid"]), len(ds["test"]), len(ds["valid_small"])) == (99, 4, 5, 1)
    # December halved by time: every valid row precedes every test row
    assert ds["valid"].timestamp.max() <= ds["test"].timestamp.min()
    label = np.concatenate([ds[n].label for n in ("train", "valid", "test")])
    assert label.sum() == sum(1 for r in reviews[:108] if r["overall"] == 5.0)
    assert ds.user_num == 4 and ds.item_num == 4
    # users numbered in order of first appearance in the file
    assert ds["train"].uid[0] == 1 and ds["train"].iid[0] == 1 and ds.item_titles[1] == "Dune"


def test_build_to_is_atomic_and_ensure_ml100k_caches(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    test_recbole_reader_and_titles(raw)
    monkeypatch.setattr(build_mod, "ml100k_recbole_dir", lambda: raw)
    monkeypatch.setenv("CORA_JAX_CACHE", str(tmp_path / "cache"))
    path = build_mod.ensure_ml100k()
    assert path == tmp_path / "cache" / "ml-100k" and len(load_dataset(path)["train"]) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-100k"]  # no temporary folder left
    stamp = os.stat(path / "train.jsonl.gz").st_mtime_ns
    assert build_mod.ensure_ml100k() == path and os.stat(path / "train.jsonl.gz").st_mtime_ns == stamp
    (path / "test.jsonl.gz").unlink()
    build_mod.ensure_ml100k()
    assert (path / "test.jsonl.gz").is_file()
    assert json.loads((path / "BUILD.json").read_text())["windows"]["train"] == [0, 4]


# ---------------------------------------------------------------------------------------------
# Raw files in the wrong format: file, line and field named, before any numbering


def test_ml1m_bad_rating_field(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Heat (1995)::Action\n", encoding="latin-1")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n1::1::five::978300761\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:2: field 'Rating': expected a number, got 'five'"):
        build_dataset("ml-1m", tmp_path)


def test_ml1m_wrong_separator(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Heat (1995)::Action\n", encoding="latin-1")
    (tmp_path / "ratings.dat").write_text("1,1,5,978300760\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:1: field 'MovieID': expected 4 '::'-separated fields"):
        build_dataset("ml-1m", tmp_path)


def test_ml1m_item_without_title(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Heat (1995)::Action\n", encoding="latin-1")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n1::2::5::978300761\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:2: field 'item': item 2 has no title in movies\.dat"):
        build_dataset("ml-1m", tmp_path)


def test_ml100k_empty_file(tmp_path):
    (tmp_path / "u.item").write_text("1|Heat (1995)|x\n", encoding="latin-1")
    (tmp_path / "u.data").write_text("")
    with pytest.raises(DataError, match=r"u\.data:1: empty file"):
        build_dataset("ml-100k", tmp_path)


def test_recbole_not_an_atomic_file(tmp_path):
    (tmp_path / "ml-100k.item").write_text("1|Toy Story|1995\n", encoding="utf-8")
    (tmp_path / "ml-100k.inter").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"ml-100k\.item:1: field 'item_id': missing from the header"):
        build_dataset("ml-100k-recbole", tmp_path)


def test_recbole_non_utf8(tmp_path):
    (tmp_path / "ml-100k.item").write_bytes(b"item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                                            b"1\tToy Story\t1995\n2\tMis\xe9rables\t1995\n")
    with pytest.raises(DataError, match=r"ml-100k\.item:3: not valid utf-8"):
        build_dataset("ml-100k-recbole", tmp_path)


def test_amazon_malformed_line(tmp_path):
    _gz_lines(tmp_path / "Books_5.json.gz", [{"reviewerID": "u", "asin": "b", "overall": 5.0, "unixReviewTime": 1},
                                             "{not json"])
    _gz_lines(tmp_path / "meta_Books.json.gz", [{"asin": "b", "title": "Dune"}])
    with pytest.raises(DataError, match=r"Books_5\.json\.gz:2: malformed JSON"):
        build_dataset("amazon-book", tmp_path)


def test_amazon_mistyped_field(tmp_path):
    _gz_lines(tmp_path / "Books_5.json.gz", [{"reviewerID": "u", "asin": "b", "overall": "5", "unixReviewTime": 1}])
    _gz_lines(tmp_path / "meta_Books.json.gz", [{"asin": "b", "title": "Dune"}])
    with pytest.raises(DataError, match=r"Books_5\.json\.gz:1: field 'overall'"):
        build_dataset("amazon-book", tmp_path)


def test_amazon_not_gzip(tmp_path):
    (tmp_path / "Books_5.json.gz").write_text('{"reviewerID": "u"}\n')
    _gz_lines(tmp_path / "meta_Books.json.gz", [{"asin": "b", "title": "Dune"}])
    with pytest.raises(DataError, match=r"Books_5\.json\.gz:1: not a readable gzip file"):
        build_dataset("amazon-book", tmp_path)

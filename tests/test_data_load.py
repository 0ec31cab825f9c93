"""Loading and validating the CoLLM JSON Lines layout; the Split/Dataset API; one test per bad input."""
import functools
import gzip
import json
import re

import numpy as np
import pytest

from cora_jax.data import DataError, load_dataset


@functools.lru_cache(maxsize=1)
def _shared(path):
    return load_dataset(path)


def test_shared_split_counts(ml1m_dir):
    ds = _shared(ml1m_dir)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 33891, "valid": 10401, "valid_small": 5200, "test": 7331}
    assert (ds.user_num, ds.item_num, ds.domain) == (839, 3256, "movie")
    assert ds.item_titles[0] == "" and ds.item_titles[1] != ""
    assert (len(ds["test_warm"]), len(ds["test_cold"])) == (4153, 3178)
    assert ds["test_warm"].name == "test_warm" and (ds["test_warm"].not_cold == 1).all()
    assert round(float(ds["train"].label.mean()), 3) == 0.537
    test = ds["test"]
    assert test.row[0] == 97 and test.uid[0] == 4 and test.iid[0] == 96
    assert test.history(0)[0] == 0 and len(test.history(0)) == 53
    with pytest.raises(KeyError):
        ds["nope"]


def test_recent_history_and_take(ml1m_dir):
    s = _shared(ml1m_dir)["valid"]
    idx = np.array([5, 0, 5, 1234, 10400])
    sub = s.take(idx, "x")
    assert sub.name == "x" and np.array_equal(sub.row, s.row[idx])
    for k, j in enumerate(idx):
        assert np.array_equal(sub.history(k), s.history(j))
    for max_len in (1, 7, 400):
        rec = s.recent_history(max_len)
        assert rec.shape == (len(s), max_len) and rec.dtype == np.int32
        for j in (0, 17, 999, len(s) - 1):
            real = s.history(j)[1:][-max_len:]
            want = np.r_[np.zeros(max_len - len(real), np.int32), real]
            assert np.array_equal(rec[j], want)


# ---------------------------------------------------------------------------------------------
# A tiny valid dataset, then one corruption per test.

def _rec(row, uid, iid, label, ts, his, flag, not_cold, titles):
    return {"row": row, "uid": uid, "iid": iid, "label": label, "timestamp": ts, "his": his,
            "his_title": [""] + [titles[i] for i in his[1:]], "title": titles[iid], "flag": float(flag),
            "not_cold": not_cold}


TITLES = {1: "Heat (1995)", 2: "Amélie (2001)"}


def _tiny():
    return {
        "train": [_rec(0, 1, 1, 1, 100, [0], -1, 1, TITLES), _rec(1, 1, 2, 0, 200, [0, 1], -1, 1, TITLES)],
        "valid": [_rec(2, 1, 1, 1, 300, [0, 1], 0, 1, TITLES)],
        "valid_small": [_rec(2, 1, 1, 1, 300, [0, 1], 0, 1, TITLES)],
        "test": [_rec(3, 2, 2, 0, 400, [0], 1, 0, TITLES)],
    }


def _write(root, data):
    for name, lines in data.items():
        with gzip.open(root / f"{name}.jsonl.gz", "wb") as fh:
            for line in lines:
                if isinstance(line, dict):
                    line = json.dumps(line, ensure_ascii=False)
                fh.write(line if isinstance(line, bytes) else line.encode("utf-8"))
                fh.write(b"\n")
    return root


def _bad(tmp_path, mutate, pattern):
    data = _tiny()
    mutate(data)
    _write(tmp_path, data)
    with pytest.raises(DataError, match=pattern):
        load_dataset(tmp_path)


def test_tiny_valid_loads(tmp_path):
    ds = load_dataset(_write(tmp_path, _tiny()))
    assert ds.user_num == 3 and ds.item_num == 3 and list(ds.item_titles) == ["", "Heat (1995)", "Amélie (2001)"]
    assert ds["train"].history(1).tolist() == [0, 1]


def test_malformed_json(tmp_path):
    _bad(tmp_path, lambda d: d["train"].__setitem__(1, '{"row": 1, "uid": '), r"train\.jsonl\.gz:2: malformed JSON")


def test_missing_field(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].pop("label"), r"test\.jsonl\.gz:1: field 'label': missing")


def test_mistyped_field(tmp_path):
    _bad(tmp_path, lambda d: d["valid"][0].__setitem__("uid", "1"), r"valid\.jsonl\.gz:1: field 'uid': expected an integer")


def test_mistyped_history_entry(tmp_path):
    _bad(tmp_path, lambda d: d["train"][1].__setitem__("his", [0, "1"]), r"train\.jsonl\.gz:2: field 'his\[1\]'")


def test_mistyped_history_title(tmp_path):
    _bad(tmp_path, lambda d: d["train"][1].__setitem__("his_title", ["", 5]), r"train\.jsonl\.gz:2: field 'his_title\[1\]'")


def test_negative_id(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("iid", -3), r"test\.jsonl\.gz:1: field 'iid': -3 is out of range")


def test_padding_id_as_user(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("uid", 0), r"test\.jsonl\.gz:1: field 'uid': 0 is out of range")


def test_history_id_out_of_range(tmp_path):
    _bad(tmp_path, lambda d: d["train"][1].__setitem__("his", [0, 2**31]), r"train\.jsonl\.gz:2: field 'his\[1\]': item id")


def test_label_out_of_range(tmp_path):
    _bad(tmp_path, lambda d: d["train"][0].__setitem__("label", 2), r"train\.jsonl\.gz:1: field 'label'")


def test_history_without_padding(tmp_path):
    def mutate(d):
        d["train"][1]["his"] = [1]
        d["train"][1]["his_title"] = ["Heat (1995)"]
    _bad(tmp_path, mutate, r"train\.jsonl\.gz:2: field 'his': must start with the padding id 0")


def test_history_title_length_mismatch(tmp_path):
    _bad(tmp_path, lambda d: d["valid"][0].__setitem__("his_title", [""]), r"valid\.jsonl\.gz:1: field 'his_title': has 1 entries but his has 2")


def test_title_conflict(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("title", "Other"), r"test\.jsonl\.gz:1: field 'title': title 'Other' of item 2 conflicts")


def test_history_title_conflict(tmp_path):
    _bad(tmp_path, lambda d: d["valid"][0].__setitem__("his_title", ["", "Heat"]),
         r"valid\.jsonl\.gz:1: field 'his_title\[1\]': title 'Heat' of item 1 conflicts")


def test_non_utf8_title(tmp_path):
    line = json.dumps(_tiny()["test"][0], ensure_ascii=False).encode("utf-8").replace("Amélie".encode(), b"Am\xe9lie")
    _bad(tmp_path, lambda d: d["test"].__setitem__(0, line), r"test\.jsonl\.gz:1: field 'title': not valid UTF-8")


def test_empty_file(tmp_path):
    _bad(tmp_path, lambda d: d.__setitem__("valid_small", []), r"valid_small\.jsonl\.gz:1: empty file")


def test_not_gzip(tmp_path):
    _write(tmp_path, _tiny())
    (tmp_path / "test.jsonl.gz").write_text(json.dumps(_tiny()["test"][0]) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl\.gz: not a readable gzip"):
        load_dataset(tmp_path)


def test_missing_file(tmp_path):
    _write(tmp_path, _tiny())
    (tmp_path / "valid.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"valid\.jsonl\.gz: file not found"):
        load_dataset(tmp_path)


def test_wrong_flag(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("flag", 0), r"test\.jsonl\.gz:1: field 'flag': expected 1")


def test_wrong_not_cold(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("not_cold", 1), r"test\.jsonl\.gz:1: field 'not_cold'")


def test_duplicate_row(tmp_path):
    _bad(tmp_path, lambda d: d["test"][0].__setitem__("row", 1), r"test\.jsonl\.gz:1: field 'row': row 1 occurs twice")


def test_valid_small_not_from_valid(tmp_path):
    _bad(tmp_path, lambda d: d["valid_small"][0].__setitem__("row", 9), r"valid_small\.jsonl\.gz:1: field 'row': row 9 is not in valid")


def test_messages_name_file_line_field(tmp_path):
    data = _tiny()
    data["train"][1]["timestamp"] = 1.5
    _write(tmp_path, data)
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert re.fullmatch(r".*train\.jsonl\.gz:2: field 'timestamp': expected an integer, got float 1\.5", str(err.value))
    assert (err.value.line, err.value.field) == (2, "timestamp")


def test_missing_split_folder_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match=r"python -m cora_jax\.data build --source ml-1m --raw .* --out .*nothing"):
        load_dataset(tmp_path / "nothing")


def test_presets_read_ml1m_from_cora_data(monkeypatch, tmp_path):
    import importlib

    import configs.cora

    monkeypatch.setenv("CORA_DATA", str(tmp_path))
    try:
        assert importlib.reload(configs.cora).CORA_MF_ML1M.data == str(tmp_path / "ml-1m-collm")
        monkeypatch.delenv("CORA_DATA")
        assert importlib.reload(configs.cora).CORA_MF_ML1M.data == "data/ml-1m-collm"
    finally:
        monkeypatch.undo()
        importlib.reload(configs.cora)

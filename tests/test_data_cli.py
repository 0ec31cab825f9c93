"""`python -m cora_jax.data` through subprocesses: build (the embedded ML-100K), stats, prompt, convert-pickle."""
import json
import subprocess
import sys

import pytest

from cora_jax.assets import MissingAssetError, ml100k_recbole_dir


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "cora_jax.data", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_stats_and_prompt_on_shared_split(ml1m_dir):
    stats = json.loads(_run("stats", ml1m_dir).stdout)
    assert (stats["user_num"], stats["item_num"]) == (839, 3256)
    sp = stats["splits"]
    assert {k: v["rows"] for k, v in sp.items()} == {"train": 33891, "valid": 10401, "valid_small": 5200, "test": 7331}
    assert (sp["train"]["users"], sp["train"]["items"], sp["train"]["positive_rate"]) == (740, 3087, 0.5368)
    assert (sp["test"]["warm"], sp["test"]["cold"], sp["valid"]["positive_rate"]) == (4153, 3178, 0.5283)
    out = _run("prompt", ml1m_dir, "--split", "test", "--index", 13).stdout
    assert out == ('#Question: A user has given high ratings to the following movies: unkow. Leverage the information '
                   'to predict whether the user would enjoy the movie titled "Being John Malkovich (1999)"? '
                   'Answer with "Yes" or "No". \\n#Answer:\n')


def test_build_embedded_ml100k(tmp_path):
    try:
        ml100k_recbole_dir()
    except MissingAssetError as e:
        pytest.skip(str(e))
    out = tmp_path / "ml100k"
    # build prints the stats of what it wrote (the stats subcommand is exercised on the shared split)
    stats = json.loads(_run("build", "--source", "ml-100k-recbole", "--out", out).stdout)
    assert sorted(p.name for p in out.iterdir()) == ["BUILD.json"] + sorted(f"{n}.jsonl.gz" for n in
                                                                            ("test", "train", "valid", "valid_small"))
    rows = {k: v["rows"] for k, v in stats["splits"].items()}
    assert rows == {"train": 66994, "valid": 10991, "valid_small": 5496, "test": 22015}
    assert stats["splits"]["train"]["first_day"] == "1997-09-20" and stats["splits"]["test"]["last_day"] == "1998-04-22"
    assert sum(rows[k] for k in ("train", "valid", "test")) == 100_000  # every rating falls in a window
    assert [stats["splits"][k]["positive_rate"] for k in ("train", "valid", "test")] == [0.5573, 0.5242, 0.5576]


def test_build_with_custom_windows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.dat").write_text("1::Heat (1995)::Action\n2::Fargo (1996)::Crime\n", encoding="latin-1")
    # 2000-04, 2000-05, 2000-06, 2000-07 (UTC)
    (raw / "ratings.dat").write_text("1::1::5::956620800\n1::2::3::959299200\n2::1::4::961891200\n"
                                     "2::2::5::964569600\n", encoding="latin-1")
    out = tmp_path / "out"
    stats = json.loads(_run("build", "--source", "ml-1m", "--raw", raw, "--out", out, "--train-months", 0, 1,
                            "--valid-months", 2, 2, "--test-months", 3, 3).stdout)
    assert {k: v["rows"] for k, v in stats["splits"].items()} == {"train": 2, "valid": 1, "valid_small": 1, "test": 1}
    assert json.loads((out / "BUILD.json").read_text())["windows"]["valid"] == [2, 2]
    prompt = _run("prompt", out, "--split", "test", "--index", 0).stdout  # user 2, after rating Heat 4 in valid
    assert 'movies: "Heat (1995)". ' in prompt and 'titled "Fargo (1996)"?' in prompt
    bad = _run("prompt", out, "--split", "test", "--index", 1, check=False)
    assert bad.returncode != 0 and "out of range: test has 1 rows" in bad.stderr


def test_bad_data_exits_with_a_located_message(tmp_path):
    proc = _run("stats", tmp_path, check=False)
    assert proc.returncode != 0 and "train.jsonl.gz: file not found" in proc.stderr
    proc = _run("build", "--source", "ml-1m", "--raw", tmp_path, "--out", tmp_path / "o", check=False)
    assert proc.returncode != 0 and "movies.dat: file not found" in proc.stderr


def test_convert_pickle_requires_opt_in(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(b"not read")
    proc = _run("convert-pickle", "--train", p, "--valid", p, "--test", p, "--out", tmp_path / "o", check=False)
    assert proc.returncode != 0
    assert "can run arbitrary code" in proc.stderr and "--i-trust-these-files" in proc.stderr
    assert not (tmp_path / "o").exists()

"""Amazon-Book: the reference's three presets, and a split built by `python -m cora_jax.data build --source
amazon-book` from small synthetic files in the Amazon Review Data 2018 format, on which a CF model and a step of
the CoRA-MF Book preset train (with the tiny LLM)."""
import dataclasses
import datetime as dt
import gzip
import json
import pathlib

import numpy as np
import pytest

from configs import PRESETS
from configs.cora import BOOK, ML1M
from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.data import PromptConfig, load_dataset, split_prompts
from cora_jax.data.__main__ import main as data_main
from cora_jax.train import load_setup, train
from cora_jax.train.mesh import MeshConfig
from cora_jax.train.tiny import tiny_llm_dir


def test_book_presets_follow_the_reference():
    assert pathlib.Path(BOOK).name == "amazon-book" and pathlib.Path(BOOK).parent == pathlib.Path(ML1M).parent
    want = {"mf": (1e-3, 4), "lightgcn": (1e-2, 8), "sasrec": (1e-4, 8)}
    for cf, (lr, batch) in want.items():
        cfg = PRESETS[f"cora-{cf}-book"]
        assert (cfg.data, cfg.cf, cfg.method.kind) == (BOOK, f"runs/cf/book-{cf}", "cora")
        assert (cfg.model.rank, cfg.model.alpha, cfg.optim.lr, cfg.batch_size) == (16, 32.0, lr, batch)
        assert (cfg.eval_every, cfg.patience) == (100, 20) and cfg.optim.min_lr == pytest.approx(0.08 * lr)


def _utc(*ymd) -> int:
    return int(dt.datetime(*ymd, tzinfo=dt.timezone.utc).timestamp())


def _gz_lines(path: pathlib.Path, objs: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(o) + "\n" for o in objs)


def write_amazon_2018(raw: pathlib.Path) -> None:
    """24 readers x 24 books, each pair rated once in 2017 (so each has the more than 20 ratings the recipe keeps),
    every month used, December halved into valid / test; plus rows the recipe drops."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    reviews = [{"reviewerID": f"R{u:03d}", "asin": f"B{b:04d}", "overall": float(rng.choice([1, 3, 4, 5, 5])),
                "unixReviewTime": _utc(2017, 1 + (u + b) % 12, 1 + (3 * u + b) % 28), "summary": "ok"}
               for u in range(24) for b in range(24)]
    reviews += [{"reviewerID": "R000", "asin": "B0001", "overall": 5.0, "unixReviewTime": _utc(2016, 6, 1)},  # 2016
                {"reviewerID": "R001", "asin": "B0002", "unixReviewTime": _utc(2017, 3, 1)},  # no rating
                {"reviewerID": "R002", "asin": "B9999", "overall": 5.0, "unixReviewTime": _utc(2017, 3, 1)}]  # no title
    _gz_lines(raw / "Books_5.json.gz", reviews)
    meta = [{"asin": f"B{b:04d}", "title": f"Book number {b}", "brand": "x"} for b in range(24)]
    _gz_lines(raw / "meta_Books.json.gz", [*meta, {"asin": "B9999"}])


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    write_amazon_2018(root / "raw")
    return root


@pytest.mark.slow
def test_book_split_cf_and_a_cora_step(book, capsys):
    data = book / "amazon-book"
    data_main(["build", "--source", "amazon-book", "--raw", str(book / "raw"), "--out", str(data)])
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = {k: v["rows"] for k, v in stats["splits"].items()}
    assert stats["domain"] == "book" and (stats["user_num"], stats["item_num"]) == (25, 25)
    assert rows["train"] + rows["valid"] + rows["test"] == 24 * 24 and rows["valid"] == rows["test"] == 24
    ds = load_dataset(data)
    prompts = split_prompts(ds, ds["test"], PromptConfig(domain=ds.domain, max_titles=3))
    assert all("high ratings to the following books:" in p and "enjoy the book titled" in p for p in prompts)
    assert not any("movie" in p for p in prompts)

    cf = train_cf(CFTrainConfig(dim=8, max_epochs=2, progress=False), str(data), book / "cf")
    assert cf["epochs_run"] == 2 and np.isfinite(cf["test"]["auc"])

    llm = tiny_llm_dir(book / "llm", split_prompts(ds, ds["train"], PromptConfig(domain="book", max_titles=3)))
    cfg = dataclasses.replace(PRESETS["cora-mf-book"], data=str(data), cf=str(book / "cf"), llm=str(llm),
                              out=str(book / "cora"), max_titles=3, max_steps=1, eval_every=1, eval_batch_size=8,
                              calibrate_rows=8, progress=False, async_checkpoint=False, mesh=MeshConfig(fsdp=1))
    assert "books" in split_prompts(ds, ds["test"].take([0]), load_setup(cfg).prompt_cfg)[0]  # what training reads
    summary = train(cfg)
    assert summary["steps"] == 1 and summary["stop_reason"] == "max_steps" and summary["train_rows"] == rows["train"]
    events = [json.loads(x) for x in (book / "cora" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [1] and np.isfinite(events[1]["train_loss"])

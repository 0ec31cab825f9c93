"""eval.py recommend on tiny trained runs (CoRA and CoLLM): the ranking, its scores against score_rows and
against evaluation's own scores, --items, the default candidates, --json, and the one-line refusals."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from cora_jax.baselines import MethodConfig
from cora_jax.data import PromptConfig, render_prompt, split_prompts
from cora_jax.train import train
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.checkpoint import RunCheckpoints
from cora_jax.train.evaluate import evaluate_run
from cora_jax.train.batches import prepare_split
from cora_jax.train.models import build_model, restore_trainable
from cora_jax.train.scoring import score_rows
from cora_jax.train.setup import load_run_config, load_setup
from cora_jax.train.recommend import candidate_split, interacted_items, latest_row
from cli_helpers import error_line
from eval import main

pytestmark = pytest.mark.slow  # trains two runs

MESH = ["--mesh.fsdp", "1"]  # the mesh the runs trained on, so that every score below comes from the same shapes


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_world):
    world = tiny_world("cora")
    root = tmp_path_factory.mktemp("recommend")
    for name, kind in (("cora", "cora"), ("collm", "collm")):
        train(dataclasses.replace(world.base, method=MethodConfig(kind=kind), out=str(root / name)))
    # the user of the first test row: their latest row is a test row, which evaluation scores too
    return root, world.ds, int(world.ds["test"].uid[0])


def _recommend(capsys, *args) -> str:
    capsys.readouterr()
    main(["recommend", *map(str, args), *MESH])
    return capsys.readouterr().out


def _score_rows(run_dir, rows) -> np.ndarray:
    """The run's best checkpoint on these rows, through the evaluation's own functions."""
    cfg = dataclasses.replace(load_run_config(run_dir), out=str(run_dir), progress=False)
    mesh = M.make_mesh(M.MeshConfig(fsdp=1))
    setup = load_setup(cfg, mesh=mesh)
    ckpt = RunCheckpoints(run_dir, async_save=False, writable=False)
    best = ckpt.best_step()
    ckpt.close()
    graphdef, st = restore_trainable(run_dir, best, build_model(cfg, setup), mesh)
    step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)
    return score_rows(lambda b: step(st.trainable, st.frozen, b), prepare_split(setup, rows), cfg.eval_batch_size,
                      setup.tokenizer.pad_id, cfg.length_bucket, mesh, progress=False)


def test_synthetic_rows_are_the_latest_row_with_each_candidate(runs):
    _, ds, uid = runs
    latest = latest_row(ds, uid)
    mine = np.concatenate([ds[n].row[ds[n].uid == uid] for n in ("train", "valid", "test")])
    assert latest.row[0] == mine.max() and latest.uid[0] == uid
    rows = candidate_split(ds, uid, np.array([5, 7]))
    assert rows.iid.tolist() == [5, 7] and (rows.uid == uid).all()
    his = ds.item_titles[latest.history(0)[1:]].tolist()
    cfg = PromptConfig(domain=ds.domain, max_titles=3)
    assert split_prompts(ds, rows, cfg) == [render_prompt(his, ds.item_titles[i], cfg) for i in (5, 7)]


@pytest.mark.parametrize("name, method", [("cora", "CoRA-MF"), ("collm", "CoLLM-MF")])
def test_default_candidates_ranked_by_the_runs_scores(runs, capsys, name, method):
    root, ds, uid = runs
    res = json.loads(_recommend(capsys, "--run", root / name, "--user", uid, "--top", 50, "--seed", 3, "--json"))
    ranked = res["ranked"]
    assert res["method"] == method and res["user"] == uid and len(ranked) == 20
    scores = [x["score"] for x in ranked]
    assert scores == sorted(scores, reverse=True) and [x["rank"] for x in ranked] == list(range(1, 21))
    items = [x["iid"] for x in ranked]
    assert len(set(items)) == 20 and not set(items) & set(interacted_items(ds, uid).tolist())
    assert not any(x["interacted"] for x in ranked) and all(x["title"] == ds.item_titles[x["iid"]] for x in ranked)
    # the same synthetic rows through score_rows give the same scores
    want = _score_rows(root / name, candidate_split(ds, uid, np.array(items)))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    # the draw follows the seed
    again = json.loads(_recommend(capsys, "--run", root / name, "--user", uid, "--top", 50, "--seed", 3, "--json"))
    assert [x["iid"] for x in again["ranked"]] == items


@pytest.mark.parametrize("name", ["cora", "collm"])
def test_items_are_scored_as_evaluation_scores_the_users_latest_row(runs, capsys, name):
    root, ds, uid = runs
    latest = latest_row(ds, uid)
    target = int(latest.iid[0])
    out = _recommend(capsys, "--run", root / name, "--user", uid, "--items", 9, target, 4, 9, "--top", 2)
    lines = out.splitlines()
    assert f"user {uid}: 3 items scored, given (--items)" in lines[0]
    table = [line.split() for line in lines[4:]]
    assert [row[0] for row in table] == ["1", "2"] and float(table[0][2]) >= float(table[1][2])
    res = json.loads(_recommend(capsys, "--run", root / name, "--user", uid, "--items", 9, target, 4, "--json"))
    assert sorted(x["iid"] for x in res["ranked"]) == sorted([9, target, 4])
    scored = {x["iid"]: x for x in res["ranked"]}
    assert scored[target]["interacted"]
    # the user's own latest item scores what evaluation gives that row
    ev = evaluate_run(root / name, ("test",), out=root / f"{name}-eval", progress=False, mesh=M.MeshConfig(fsdp=1))
    rows = [json.loads(x) for x in (root / f"{name}-eval" / "scores.jsonl").read_text().splitlines()]
    (want,) = [r["score"] for r in rows if (r["uid"], r["iid"]) == (uid, target)]
    assert ev["best_step"] == res["best_step"]
    np.testing.assert_allclose(scored[target]["score"], want, rtol=1e-5, atol=1e-5)


def _error(capsys, *args) -> str:
    return error_line(capsys, main, ["recommend", *map(str, args), *MESH])


def test_refusals_are_one_line(runs, capsys):
    root, ds, uid = runs
    run = root / "cora"
    assert "user 99999 has no row in the data (--user 99999)" in _error(capsys, "--run", run, "--user", 99999)
    assert "item 99999 is not in the data's catalogue (--items)" in _error(
        capsys, "--run", run, "--user", uid, "--items", 3, 99999)
    assert "give --candidates N or --items ID..., not both" in _error(
        capsys, "--run", run, "--user", uid, "--items", 3, "--candidates", 5)
    assert "--top must be >= 1, got 0" in _error(capsys, "--run", run, "--user", uid, "--top", 0)
    empty = root / "untrained"
    empty.mkdir()
    shutil.copy(run / "config.json", empty / "config.json")
    assert f"{empty} has no checkpoint yet (train it first)" in _error(capsys, "--run", empty, "--user", uid)
    assert "not a training run directory (--run" in _error(capsys, "--run", root / "nowhere", "--user", uid)

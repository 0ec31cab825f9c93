"""`eval.py recommend --run DIR --user UID`: rank candidate items for one user with a run's best checkpoint
(CoRA or any baseline), printed as a table or, with --json, as one JSON object.

Each candidate is scored on a synthetic row: the user's latest row over every split (by row number) with the
candidate as its target. The prompt therefore carries the history that row has (the user's earlier liked items),
rendered exactly as evaluation renders it, and the CF model reads the same user and history. By default the
candidates are N catalogue items (ids with a title) that the user has neither a row of nor a history entry with,
drawn at random with the seed; --items scores exactly the items given.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np

from cora_jax.data import Dataset, Split
from cora_jax.errors import FlagError, UsageError
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.checkpoint import trained_best_step
from cora_jax.train.evaluate import method_name
from cora_jax.train.batches import prepare_split
from cora_jax.train.models import build_model, restore_trainable
from cora_jax.train.scoring import score_rows
from cora_jax.train.setup import SetupError, load_data, load_run_config, load_setup, make_run_mesh

DEFAULT_CANDIDATES = 20
ROW_SPLITS = ("train", "valid", "test")  # valid_small is a sample of valid: its rows are already in valid


@dataclasses.dataclass(frozen=True)
class RecommendArgs:
    run: str                                # run directory of CoRA or a baseline (train.py cora --out)
    user: int                               # the user's uid in the split files
    top: int = 10                           # print the K best-scored candidates
    candidates: int | None = None           # score N random items the user has not interacted with; None = 20
    items: tuple[int, ...] | None = None    # score exactly these item ids instead
    seed: int = 0                           # the draw of the candidates
    json: bool = False                      # print one JSON object instead of a table
    mesh: M.MeshConfig = M.MeshConfig()     # device mesh for scoring


def latest_row(ds: Dataset, uid: int) -> Split:
    """The user's latest row over every split, as a one-row split; SetupError when the user has none."""
    best = None
    for name in ROW_SPLITS:
        split = ds.splits[name]
        idx = np.flatnonzero(split.uid == uid)
        if len(idx) and (best is None or split.row[idx].max() > best[0].row[best[1]]):
            best = (split, int(idx[np.argmax(split.row[idx])]))
    if best is None:
        users = np.concatenate([ds.splits[n].uid for n in ROW_SPLITS])
        raise SetupError(f"user {uid} has no row in the data (--user {uid}): give a uid of its split files "
                         f"({users.min()} .. {users.max()})")
    split, j = best
    return split.take([j])


def interacted_items(ds: Dataset, uid: int) -> np.ndarray:
    """Sorted item ids the user has a row of, or has in a row's history, in any split."""
    seen = []
    for name in ROW_SPLITS:
        split = ds.splits[name]
        mine = split.take(np.flatnonzero(split.uid == uid))
        seen += [mine.iid, mine.his_values]
    return np.setdiff1d(np.concatenate(seen), [0])  # 0 pads every history


def catalogue(ds: Dataset) -> np.ndarray:
    """The item ids a prompt can name: those with a title."""
    titles = ds.item_titles
    return np.array([i for i in range(1, ds.item_num) if titles[i]], np.int64)


def check_items(ds: Dataset, items: tuple[int, ...]) -> np.ndarray:
    known = catalogue(ds)
    names = set(known.tolist())
    if bad := [i for i in items if i not in names]:
        raise SetupError(f"item {bad[0]} is not in the data's catalogue (--items): give item ids with a title "
                         f"({known.min()} .. {known.max()})")
    return np.asarray(list(dict.fromkeys(items)), np.int64)  # repeats scored once


def draw_candidates(ds: Dataset, uid: int, n: int, seed: int) -> np.ndarray:
    """Up to n catalogue items the user has not interacted with, drawn with the seed (in drawn order)."""
    pool = np.setdiff1d(catalogue(ds), interacted_items(ds, uid))
    if not len(pool):
        raise SetupError(f"user {uid} has interacted with every item of the catalogue: nothing left to recommend")
    return np.random.default_rng(seed).choice(pool, min(n, len(pool)), replace=False)


def candidate_split(ds: Dataset, uid: int, items: np.ndarray) -> Split:
    """One synthetic row per item: the user's latest row with the item as target (its label is meaningless)."""
    rows = latest_row(ds, uid).take(np.zeros(len(items), np.int64), name="candidates")
    return dataclasses.replace(rows, iid=np.asarray(items, np.int32), label=np.zeros(len(items), np.int32))


def recommend(run_dir: str | pathlib.Path, uid: int, items: tuple[int, ...] | None = None,
              candidates: int = DEFAULT_CANDIDATES, seed: int = 0, mesh: M.MeshConfig = M.MeshConfig()) -> dict:
    """Score the candidates with the run's best checkpoint; returns {run, method, best_step, data, user, history,
    candidates (how they were chosen), ranked [{rank, iid, title, score, interacted}, ...] best first}."""
    M.init_distributed(mesh)  # before any other jax use
    run_dir = pathlib.Path(run_dir)
    cfg = dataclasses.replace(load_run_config(run_dir), out=str(run_dir), progress=False)  # out: BinLLM's codes
    device_mesh = make_run_mesh(mesh, eval_batch_size=cfg.eval_batch_size)
    best = trained_best_step(run_dir)
    ds = load_data(cfg.data)  # the ids are checked before the (slow) LLM is loaded
    latest = latest_row(ds, uid)
    chosen = check_items(ds, items) if items is not None else draw_candidates(ds, uid, candidates, seed)
    rows = candidate_split(ds, uid, chosen)
    setup = load_setup(cfg, mesh=device_mesh)
    graphdef, st = restore_trainable(run_dir, best, build_model(cfg, setup), device_mesh)
    eval_step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, device_mesh)
    scores = score_rows(lambda b: eval_step(st.trainable, st.frozen, b), prepare_split(setup, rows),
                        cfg.eval_batch_size, setup.tokenizer.pad_id, cfg.length_bucket, device_mesh, progress=False)
    seen = set(interacted_items(ds, uid).tolist())
    titles = ds.item_titles
    order = np.argsort(-scores, kind="stable")
    his = latest.his_values[1:]
    return {
        "run": str(run_dir), "method": method_name(cfg, setup.cf.kind if setup.cf is not None else None),
        "best_step": best, "data": cfg.data, "user": uid,
        "history": [{"iid": int(i), "title": titles[i]} for i in his[-cfg.max_titles:]],
        "candidates": "given (--items)" if items is not None else f"{len(chosen)} drawn with seed {seed} among the "
                                                                  "items the user has not interacted with",
        "ranked": [{"rank": r + 1, "iid": int(chosen[k]), "title": titles[chosen[k]], "score": float(scores[k]),
                    "interacted": int(chosen[k]) in seen} for r, k in enumerate(order)],
    }


def table(res: dict, top: int) -> str:
    """The result as text: a header, the prompt's history and the `top` best rows."""
    history = ", ".join(f'"{h["title"]}"' for h in res["history"]) or "(none)"
    lines = [f"{res['method']} ({res['run']}, best step {res['best_step']}), user {res['user']}: "
             f"{len(res['ranked'])} items scored, {res['candidates']}",
             f"recent history (most recent last): {history}", "",
             f"{'rank':>4}  {'item':>7}  {'score':>9}  seen  title"]
    for x in res["ranked"][:top]:
        lines.append(f"{x['rank']:>4}  {x['iid']:>7}  {x['score']:>9.4f}  {'yes ' if x['interacted'] else '    '}  "
                     f"{x['title']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    import tyro

    a = tyro.cli(RecommendArgs, args=argv, prog="eval.py recommend", description=__doc__.split("\n\n")[0])
    if a.items is not None and a.candidates is not None:
        raise UsageError("give --candidates N or --items ID..., not both")
    for name in ("top", "candidates"):
        if (v := getattr(a, name)) is not None and v < 1:
            raise FlagError(name, f"must be >= 1, got {v}")
    if a.items is not None and not a.items:
        raise UsageError("--items needs at least one item id")
    res = recommend(a.run, a.user, a.items, a.candidates or DEFAULT_CANDIDATES, a.seed, a.mesh)
    if jax.process_index() == 0:
        print(json.dumps({**res, "ranked": res["ranked"][:a.top]}, indent=2, ensure_ascii=False) if a.json
              else table(res, a.top))

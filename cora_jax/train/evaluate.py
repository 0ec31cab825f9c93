"""Scoring a finished run (best checkpoint) or the zero-shot base LLM on test / warm / cold / valid,
beside the CF model's own scores on the same rows and the paper's row; writes results.json,
results.md and scores.jsonl into an output folder. Scoring runs sharded over a device mesh
(`mesh`, any shape: the checkpoint is restored straight into its shards); multi-host with
mesh.distributed, process 0 writing the files.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from cora_jax.run_files import SCORES, score_records, write_scores
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.batches import prepare_split
from cora_jax.train.checkpoint import trained_best_step, write_json
from cora_jax.train.config import TrainConfig
from cora_jax.train.models import build_model, restore_trainable
from cora_jax.train.results import CF_NAMES, ZERO_SHOT, ModelResult, display_name, models_json, paper_name
from cora_jax.train.scoring import base_score_fn, score_rows
from cora_jax.train.setup import Setup, get_split, load_run_config, load_setup, make_run_mesh

# The paper's Table 3 (Vicuna-7B, ML-1M): (AUC, UAUC). Printed beside our rows for orientation.
PAPER_ML1M = {
    "MF": (0.6486, 0.6396), "LightGCN": (0.5858, 0.6512), "SASRec": (0.7005, 0.6734), "ICL": (0.5119, 0.5178),
    "Prompt4NR": (0.7027, 0.6713), "TALLRec": (0.7044, 0.6741), "PersonPrompt": (0.7014, 0.6503),
    "CoLLM-MF": (0.7028, 0.6714), "CoLLM-LGCN": (0.7164, 0.6842), "CoLLM-SAS": (0.7059, 0.6531),
    "BinLLM": (0.7132, 0.6815),
    "CoRA-MF": (0.7361, 0.6884), "CoRA-LGCN": (0.7128, 0.6966), "CoRA-SAS": (0.7019, 0.6517),
}
# The paper's Table 4 (Vicuna-7B, ML-1M): CoRA-MF's test (AUC, UAUC) by the projections it adapts
# (model.targets; f = the FFN). The paper gives these on the whole test split, not per warm/cold view.
PAPER_ML1M_TARGETS = {
    "qkvof": (0.7312, 0.6801), "qkvo": (0.7361, 0.6884), "qkv": (0.6947, 0.5933), "qko": (0.7111, 0.5973),
    "qk": (0.6784, 0.5887),
}


def method_name(cfg: TrainConfig, cf_kind: str | None) -> str:
    """A run's method as its scores, adapter and recommendations name it: CoRA-MF, TALLRec, ... (+ " (ID-only)")."""
    return display_name(paper_name(cfg.method.kind, cf_kind), "method", cfg.with_titles)


def _metrics_dict(m) -> dict:
    return dataclasses.asdict(m) if dataclasses.is_dataclass(m) else dict(m)


def split_report(split, scores: np.ndarray, *, views: bool) -> dict[str, dict]:
    """{name: metrics} for the split and, when views, its warm and cold parts."""
    from cora_jax.metrics import evaluate_split, warm_cold_report

    if views:
        return {k: _metrics_dict(v) for k, v in warm_cold_report(split, scores).items()}
    return {split.name: _metrics_dict(evaluate_split(split, scores))}


def _fmt(m: dict | None) -> str:
    if not m:
        return "| – | – |"
    auc = "nan" if m["auc"] is None or np.isnan(m["auc"]) else f"{m['auc']:.4f}"
    uauc = "nan" if m["uauc"] is None or np.isnan(m["uauc"]) else f"{m['uauc']:.4f}"
    return f"| {auc} | {uauc} ({m['uauc_users']}/{m['users']} users) |"


def markdown_table(results: dict) -> str:
    """One row per (model, split); the CF model and the paper's numbers beside ours."""
    lines = [f"# {results['title']}", "", "| model | split | rows | AUC | UAUC |", "|---|---|---|---|---|"]
    for model in map(ModelResult.from_json, results["models"].values()):
        for split_name, m in model.splits.items():
            lines.append(f"| {model.name} | {split_name} | {m['rows']} {_fmt(m)}")
    paper = results.get("paper") or {}
    if paper:
        lines += ["", f"Paper (Table 3, {paper['setting']}), test:", "", "| model | AUC | UAUC |", "|---|---|---|"]
        for name, (auc, uauc) in paper["rows"].items():
            lines.append(f"| {name} | {auc:.4f} | {uauc:.4f} |")
    lines += ["", results.get("note", "")]
    return "\n".join(lines).rstrip() + "\n"


def write_outputs(out_dir: pathlib.Path, results: dict, rows: list[dict]) -> pathlib.Path:
    """results.json, results.md, scores.jsonl into out_dir (by process 0 only); returns the results.json path."""
    if jax.process_index() != 0:
        return out_dir / "results.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scores(out_dir / SCORES, rows)
    (out_dir / "results.md").write_text(markdown_table(results))
    write_json(out_dir / "results.json", results)
    return out_dir / "results.json"


def score_splits(setup: Setup, fn, splits: tuple[str, ...], limit: int | None, sample_seed: int | None,
                 batch_size: int, bucket: int, tag: str, mesh: jax.sharding.Mesh,
                 progress: bool = True) -> tuple[dict, dict, list[dict]]:
    """(our metrics, CF metrics, score records) over the requested splits; test/valid get warm/cold views.
    fn: sharded batch -> scores (see scoring.score_rows)."""
    ours, cf_metrics, records = {}, {}, []
    progress = progress and jax.process_index() == 0
    for name in splits:
        split = get_split(setup.dataset, name, limit, sample_seed)
        inputs = prepare_split(setup, split)
        scores = score_rows(fn, inputs, batch_size, setup.tokenizer.pad_id, bucket, mesh, desc=f"{tag} {name}",
                            progress=progress)
        views = name in ("test", "valid", "valid_small")
        ours.update(split_report(split, scores, views=views))
        records += score_records(tag, name, split, scores)
        if setup.cf is not None:
            cf_metrics.update(split_report(split, setup.cf.scores(split), views=views))
    return ours, cf_metrics, records


def _limit_note(limit: int | None, sample_seed: int | None) -> str:
    if not limit:
        return ""
    if sample_seed is None:
        return f"limit: the first {limit} rows of each split in file order"
    return f"limit: {limit} rows of each split drawn at random with seed {sample_seed}"


def evaluate_run(run_dir: str | pathlib.Path, splits: tuple[str, ...] = ("test", "valid"), limit: int | None = None,
                 out: str | pathlib.Path | None = None, setup: Setup | None = None, progress: bool = True,
                 sample_seed: int | None = None, mesh: M.MeshConfig = M.MeshConfig()) -> dict:
    """Score the run's best checkpoint on the device mesh `mesh` (any shape, not necessarily the
    training one); writes into `out` (default RUN/eval) and returns the results dict."""
    M.init_distributed(mesh)  # before any other jax use
    t0 = time.time()
    run_dir = pathlib.Path(run_dir)
    # out: the run's own files (BinLLM codes) wherever it now lives
    cfg = dataclasses.replace(load_run_config(run_dir), out=str(run_dir), progress=progress)
    device_mesh = make_run_mesh(mesh, eval_batch_size=cfg.eval_batch_size)
    best = trained_best_step(run_dir)
    setup = setup or load_setup(cfg, mesh=device_mesh)
    graphdef, st = restore_trainable(run_dir, best, build_model(cfg, setup), device_mesh)
    return score_trained(cfg, setup, graphdef, st, device_mesh, source={"run": str(run_dir), "best_step": best},
                         label=f"{run_dir}, best step {best}", splits=splits, limit=limit, sample_seed=sample_seed,
                         out=pathlib.Path(out or run_dir / "eval"), progress=progress, t0=t0)


def score_trained(cfg: TrainConfig, setup: Setup, graphdef, st: S.ShardedState, mesh: jax.sharding.Mesh, *,
                  source: dict, label: str, splits: tuple[str, ...], limit: int | None, sample_seed: int | None,
                  out: pathlib.Path, progress: bool, t0: float) -> dict:
    """Score a trained recommender (graphdef + its placed state) and write into `out`; returns the
    results dict. source: where the parameters came from (run, best_step, ...); label: said in the title."""
    eval_step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)
    method = paper_name(cfg.method.kind, setup.cf.kind if setup.cf is not None else None)
    tag = display_name(method, "method", cfg.with_titles)
    ours, cf_m, records = score_splits(setup, lambda b: eval_step(st.trainable, st.frozen, b), splits, limit,
                                       sample_seed, cfg.eval_batch_size, cfg.length_bucket, tag, mesh, progress)
    models = [ModelResult(method, "method", cfg.with_titles, limit, ours, tag)]
    if cf_m:
        models.append(ModelResult(CF_NAMES[setup.cf.kind], "cf", True, limit, cf_m, None))
    results = {
        "title": f"{tag} ({label})", "kind": "cora", "method": cfg.method.kind,
        "with_titles": cfg.with_titles, **source,
        "data": cfg.data, "llm": cfg.llm or "SmolLM2-135M-Instruct (embedded)", "limit": limit,
        "models": models_json(models),
        # the paper's rows are of prompts with titles: none beside an ID-only run
        "paper": {"setting": "Vicuna-7B, ML-1M", "rows": {
            k: PAPER_ML1M[k] for k in [*(m.method for m in models if m.with_titles), ZERO_SHOT] if k in PAPER_ML1M}},
        "note": _limit_note(limit, sample_seed),
        "wall_s": time.time() - t0,
    }
    return {**results, "results_json": str(write_outputs(out, results, records))}


def evaluate_zero_shot(llm: str | None, data: str, splits: tuple[str, ...] = ("test", "valid"), limit: int | None = None,
                       out: str | pathlib.Path = "runs/zero-shot", cf: str | None = None, max_titles: int = 10,
                       eval_batch_size: int = 32, length_bucket: int = 8, llm_dtype: str = "float32",
                       setup: Setup | None = None, progress: bool = True, sample_seed: int | None = None,
                       mesh: M.MeshConfig = M.MeshConfig()) -> dict:
    """Score the frozen base LLM (ICL), sharded over `mesh`: the same prompts, no delta. `cf` adds the CF
    model's scores."""
    M.init_distributed(mesh)  # before any other jax use
    t0 = time.time()
    cfg = TrainConfig(data=data, llm=llm, cf=cf or "", max_titles=max_titles, eval_batch_size=eval_batch_size,
                      length_bucket=length_bucket, llm_dtype=llm_dtype, mesh=mesh, progress=progress)
    device_mesh = make_run_mesh(mesh, eval_batch_size=eval_batch_size)
    setup = setup or load_setup(cfg, need_cf=cf is not None, mesh=device_mesh)
    fn = base_score_fn(setup.llm, setup.answer_id, device_mesh)
    ours, cf_m, records = score_splits(setup, fn, splits, limit, sample_seed, eval_batch_size, length_bucket,
                                       ZERO_SHOT, device_mesh, progress)
    models = [ModelResult(ZERO_SHOT, "zero-shot", cfg.with_titles, limit, ours, ZERO_SHOT)]
    if cf_m:
        models.append(ModelResult(CF_NAMES.get(setup.cf.kind, setup.cf.kind), "cf", True, limit, cf_m, None))
    results = {
        "title": f"Zero-shot {llm or 'SmolLM2-135M-Instruct (embedded)'} on {data}", "kind": "zero_shot",
        "data": data, "llm": llm or "SmolLM2-135M-Instruct (embedded)", "limit": limit, "max_titles": max_titles,
        "models": models_json(models), "paper": {"setting": "Vicuna-7B, ML-1M", "rows": {ZERO_SHOT: PAPER_ML1M[ZERO_SHOT]}},
        "note": _limit_note(limit, sample_seed), "wall_s": time.time() - t0,
    }
    return {**results, "results_json": str(write_outputs(pathlib.Path(out), results, records))}

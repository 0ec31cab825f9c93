"""The README's main job on the embedded defaults: ML-100K + SmolLM2-135M + MF.

pretrain MF (unless its checkpoint exists) -> train CoRA-MF (resumes if interrupted) -> score the
same test rows with CoRA-MF, the zero-shot base LLM and MF -> print the table. The last line
printed is the path of results.json.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

from cora_jax.train.checkpoint import write_json
from cora_jax.train.results import ModelResult, models_json


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"                # results.json, results.md, scores.jsonl; CoRA run in OUT/cora-mf
    cf_dir: str = "runs/cf/ml100k-mf"     # MF checkpoint; trained here first when absent
    preset: str = "demo-ml100k"           # CoRA preset (configs/)
    test_rows: int | None = 384           # score this many test rows, drawn at random (None = the whole test split)
    test_seed: int = 0                    # seed of that draw (the same rows for CoRA-MF, zero-shot and MF)
    max_steps: int | None = None          # override the preset's training-step cap
    progress: bool = True                 # tqdm bars


def print_data_summary(preset, n_prompts: int = 3) -> None:
    """The split's statistics (one JSON line) and the first test prompts as the preset renders them."""
    from cora_jax.data import dataset_stats, split_prompts
    from cora_jax.train.setup import load_data, make_prompt_config

    ds = load_data(preset.data)
    print(f"[demo] data: {json.dumps(dataset_stats(ds))}")
    test = ds["test"]
    prompts = split_prompts(ds, test.take(range(n_prompts)), make_prompt_config(ds, preset))
    for row, text in enumerate(prompts):
        print(f"[demo] test row {row} (uid {test.uid[row]}, iid {test.iid[row]}, label {test.label[row]}): {text}")


def run_demo(cfg: DemoConfig) -> pathlib.Path:
    from cora_jax.cf import CFTrainConfig, train_cf
    from configs import get_preset
    from cora_jax.train.evaluate import evaluate_run, evaluate_zero_shot, markdown_table
    from cora_jax.train.loop import train
    from cora_jax.train.setup import load_setup

    t0 = time.time()
    out = pathlib.Path(cfg.out)
    timings = {}
    preset = get_preset(cfg.preset)
    print_data_summary(preset)
    if not (pathlib.Path(cfg.cf_dir) / "config.json").is_file():
        print(f"[demo] pretraining MF on ML-100K -> {cfg.cf_dir}", flush=True)
        train_cf(CFTrainConfig(model="mf", progress=cfg.progress), "ml100k", pathlib.Path(cfg.cf_dir))
    timings["mf_s"] = time.time() - t0

    overrides = {"out": str(out / "cora-mf"), "cf": cfg.cf_dir, "progress": cfg.progress}
    if cfg.max_steps is not None:
        overrides["max_steps"] = cfg.max_steps
    tcfg = dataclasses.replace(preset, **overrides)
    setup = load_setup(tcfg)
    t1 = time.time()
    print(f"[demo] training CoRA-MF ({cfg.preset}) -> {tcfg.out}", flush=True)
    summary = train(tcfg, setup)
    timings["cora_train_s"] = time.time() - t1

    t2 = time.time()
    cora = evaluate_run(tcfg.out, ("test",), cfg.test_rows, out / "cora-eval", setup=setup, progress=cfg.progress,
                        sample_seed=cfg.test_seed, mesh=tcfg.mesh)
    zs = evaluate_zero_shot(None, tcfg.data, ("test",), cfg.test_rows, out / "zero-shot", max_titles=tcfg.max_titles,
                            eval_batch_size=tcfg.eval_batch_size, length_bucket=tcfg.length_bucket, setup=setup,
                            progress=cfg.progress, sample_seed=cfg.test_seed, mesh=tcfg.mesh)
    timings["eval_s"] = time.time() - t2
    timings["total_s"] = time.time() - t0

    models = [*map(ModelResult.from_json, cora["models"].values()),
              *(m for m in map(ModelResult.from_json, zs["models"].values()) if m.role == "zero-shot")]
    test_auc = {m.role: m.splits["test"]["auc"] for m in models}  # CoRA-MF, MF, zero-shot: one model each
    results = {
        "title": "Demo: ML-100K + SmolLM2-135M + MF (embedded defaults)", "kind": "demo",
        "data": tcfg.data, "llm": cora["llm"],
        "rows": f"{cfg.test_rows} test rows drawn at random (seed {cfg.test_seed})" if cfg.test_rows else "the whole test split",
        "cora_mf_test_auc": test_auc["method"],
        "zero_shot_test_auc": test_auc["zero-shot"],
        "mf_test_auc": test_auc["cf"],
        "models": models_json(models), "train": summary, "preset": cfg.preset, "timings_s": timings,
        "paper": cora["paper"], "note": "the paper's rows are Vicuna-7B on ML-1M, shown for orientation only",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown_table(results))
    write_json(out / "results.json", results)
    print(markdown_table(results))
    print(json.dumps({k: results[k] for k in ("cora_mf_test_auc", "zero_shot_test_auc", "mf_test_auc")}))
    print(f"[demo] total {timings['total_s'] / 60:.1f} min")
    path = (out / "results.json").absolute()
    print(path, flush=True)
    return path

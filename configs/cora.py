"""Named CoRA presets (docs/reference.md#training), each a frozen TrainConfig; `python train.py cora --preset NAME`.

Paths are relative to the repository root (where train.py runs). The 7B presets expect the model
directory given with --llm (HF layout: config.json + safetensors + tokenizer files).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

from cora_jax.cora import CoRAConfig
from cora_jax.train.config import TrainConfig
from cora_jax.train.optim import OptimConfig

# The paper's ML-1M split: $CORA_DATA/ml-1m-collm, by default data/ml-1m-collm in the repository (where
# `python -m cora_jax.data build --source ml-1m --out data/ml-1m-collm` puts it); --data overrides it per run.
ML1M = str(pathlib.Path(os.environ.get("CORA_DATA", "data")) / "ml-1m-collm")
# The paper's Amazon-Book split beside it (`python -m cora_jax.data build --source amazon-book --out data/amazon-book`).
BOOK = str(pathlib.Path(os.environ.get("CORA_DATA", "data")) / "amazon-book")
LLM_7B = "models/vicuna-7b"             # placeholder; pass --llm /path/to/vicuna-7b (or Llama-2-7B)

# --- The paper's ML-1M configurations (SmolLM2 by default) ---------------------------------------
# Reference: lr 1e-3 warmup 200 steps from 1e-5, cosine to 8e-5; patience 20 evaluations.
# MF: r16, batch 8, 100 steps per "epoch". LightGCN / SASRec on ML-1M: r64, batch 16, 50 steps.
# MF's cosine horizon is 20,000 steps here, 100,000 in the reference (docs/reference.md#differences).
CORA_MF_ML1M = TrainConfig(
    data=ML1M, cf="runs/cf/ml1m-mf", out="runs/cora/mf-ml1m",
    model=CoRAConfig(rank=16, alpha=32.0), optim=OptimConfig(lr=1e-3, decay_steps=20_000),
    batch_size=8, eval_every=100, patience=20, max_steps=20_000,
)
CORA_LIGHTGCN_ML1M = dataclasses.replace(
    CORA_MF_ML1M, cf="runs/cf/ml1m-lightgcn", out="runs/cora/lightgcn-ml1m",
    model=CoRAConfig(rank=64, alpha=128.0), batch_size=16, eval_every=50, optim=OptimConfig(lr=1e-3, decay_steps=10_000),
    max_steps=10_000,
)
CORA_SASREC_ML1M = dataclasses.replace(CORA_LIGHTGCN_ML1M, cf="runs/cf/ml1m-sasrec", out="runs/cora/sasrec-ml1m")

# --- The paper's Amazon-Book configurations (the split's domain "book" makes the prompt say "books") ----
# Reference: r 16 for every backbone; MF lr 1e-3 batch 4, LightGCN lr 1e-2 batch 8, SASRec lr 1e-4 batch 8; 100
# steps between evaluations, patience 20. The rest is CoRA-MF's ML-1M schedule, the cosine's end scaled with the
# peak (0.08 x lr, as the baseline presets scale it).
def _book(cf: str, lr: float, min_lr: float, batch_size: int) -> TrainConfig:
    return dataclasses.replace(
        CORA_MF_ML1M, data=BOOK, cf=f"runs/cf/book-{cf}", out=f"runs/cora/{cf}-book",
        model=CoRAConfig(rank=16, alpha=32.0), optim=OptimConfig(lr=lr, min_lr=min_lr, decay_steps=20_000),
        batch_size=batch_size, eval_every=100, patience=20,
    )


CORA_MF_BOOK = _book("mf", 1e-3, 8e-5, 4)
CORA_LIGHTGCN_BOOK = _book("lightgcn", 1e-2, 8e-4, 8)
CORA_SASREC_BOOK = _book("sasrec", 1e-4, 8e-6, 8)

# --- A wall-clock budget: the MF preset, cut to what a shared 2-core CPU does in 90 minutes ----------
# At most 1,000 steps; early stopping on 500 valid_small rows drawn with the seed.
CORA_MF_ML1M_90MIN = dataclasses.replace(
    CORA_MF_ML1M, out="runs/cora/mf-ml1m-90min", max_wall_minutes=90.0, valid_limit=500, eval_every=100,
    optim=OptimConfig(lr=1e-3, warmup_steps=50, decay_steps=1_000), max_steps=1_000,
)


# --- Step budgets: every method of the CPU comparison trains on the same batches --------------------
# A budget counts steps, not minutes, so a shared CPU changes its wall time, not its result. SmolLM2, 3 history
# titles, batches of 8, cosine over the budget, the best of its evaluations on seeded valid_small rows.
# 64 and 160 steps: the first comparisons (docs/results.md); 480: the whole-test-split Table 3.
def step_budget(steps: int, eval_every: int, warmup: int, valid_limit: int = 128) -> TrainConfig:
    """CoRA-MF on a budget of `steps` batches; the baselines replace its method (configs/baselines.py)."""
    return TrainConfig(
        data=ML1M, cf="runs/cf/ml1m-mf", out=f"runs/baselines/cora-mf-ml1m-{steps}steps",
        model=CoRAConfig(rank=16, alpha=32.0),
        optim=OptimConfig(lr=1e-3, warmup_steps=warmup, decay_steps=steps, grad_clip=1.0),
        max_titles=3, batch_size=8, eval_every=eval_every, patience=2, max_steps=steps, valid_limit=valid_limit,
        length_bucket=32, bucket_train=True,  # less padding; the same AUC as uniform batches (docs/results.md#seed-study)
    )


BUDGETS = {64: step_budget(64, 32, 10), 160: step_budget(160, 40, 20), 480: step_budget(480, 160, 20, valid_limit=256)}
BUDGET_PRESETS: dict[str, TrainConfig] = {f"cora-mf-ml1m-{n}steps": cfg for n, cfg in BUDGETS.items()}
# CoRA on the other backbones (the paper's ML-1M rank 64) on the Table-3 budget.
for _cf in ("lightgcn", "sasrec"):
    BUDGET_PRESETS[f"cora-{_cf}-ml1m-480steps"] = dataclasses.replace(
        BUDGETS[480], cf=f"runs/cf/ml1m-{_cf}", out=f"runs/baselines/cora-{_cf}-ml1m-480steps",
        model=CoRAConfig(rank=64, alpha=128.0))
for _n in (64, 160):
    _base = BUDGET_PRESETS[f"cora-mf-ml1m-{_n}steps"]
    # Table 4: the adapted weight types (qkvo is the plain preset).
    for _t in ("qkvof", "qkv", "qko", "qk"):
        BUDGET_PRESETS[f"cora-mf-ml1m-{_n}steps-{_t}"] = dataclasses.replace(
            _base, model=dataclasses.replace(_base.model, targets=_t), out=f"runs/baselines/cora-mf-ml1m-{_n}steps-{_t}")
    # Fig. 6: ID-only prompts.
    BUDGET_PRESETS[f"cora-mf-ml1m-{_n}steps-idonly"] = dataclasses.replace(
        _base, with_titles=False, out=f"runs/baselines/cora-mf-ml1m-{_n}steps-idonly")


def _seven_b(cfg: TrainConfig, out: str) -> TrainConfig:
    """The same run on a Vicuna-7B / Llama-2-7B directory (d_model 4096 checked), bfloat16 LLM."""
    return dataclasses.replace(cfg, llm=LLM_7B, llm_dtype="bfloat16", out=out,
                               model=dataclasses.replace(cfg.model, d_model=4096))


# --- The embedded demo: ML-100K + SmolLM2 + MF, whole pipeline in < 20 min on 2 CPU cores -------
# A fixed 128 steps (so every machine gives the same numbers), sized for the slowest 2-core CPU seen (6.5 s a
# step); 3 history titles, lengths padded to multiples of 32 and length-bucketed batches keep prompts short,
# padding low and compiled shapes few.
# The best of four evaluations on 128 valid_small rows is kept; `train.py demo` then scores 384 test rows.
# The 16-minute wall budget is only a safety net: it warns when it cuts training short.
DEMO_ML100K = TrainConfig(
    data="ml100k", cf="runs/cf/ml100k-mf", out="runs/demo/cora-mf",
    model=CoRAConfig(rank=16, alpha=32.0),
    optim=OptimConfig(lr=1e-3, warmup_steps=20, decay_steps=128, grad_clip=1.0),
    max_titles=3, batch_size=8, eval_every=32, patience=4, max_steps=128, valid_limit=128,
    length_bucket=32, bucket_train=True, max_wall_minutes=16.0,
)

PRESETS: dict[str, TrainConfig] = {
    "demo-ml100k": DEMO_ML100K,
    "cora-mf-ml1m": CORA_MF_ML1M,
    "cora-lightgcn-ml1m": CORA_LIGHTGCN_ML1M,
    "cora-sasrec-ml1m": CORA_SASREC_ML1M,
    "cora-mf-ml1m-90min": CORA_MF_ML1M_90MIN,
    "cora-mf-book": CORA_MF_BOOK,
    "cora-lightgcn-book": CORA_LIGHTGCN_BOOK,
    "cora-sasrec-book": CORA_SASREC_BOOK,
    "cora-mf-ml1m-7b": _seven_b(CORA_MF_ML1M, "runs/cora/mf-ml1m-7b"),
    "cora-lightgcn-ml1m-7b": _seven_b(CORA_LIGHTGCN_ML1M, "runs/cora/lightgcn-ml1m-7b"),
    "cora-sasrec-ml1m-7b": _seven_b(CORA_SASREC_ML1M, "runs/cora/sasrec-ml1m-7b"),
    **BUDGET_PRESETS,
}

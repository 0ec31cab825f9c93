"""Named CoRA presets (cora-reference.md §6), each a frozen TrainConfig; `python train.py cora --preset NAME`.

Paths are relative to the repository root (where train.py runs). The 7B presets expect the model
directory given with --llm (HF layout: config.json + safetensors + tokenizer files).
"""
from __future__ import annotations

import dataclasses

from cora_jax.cora import CoRAConfig
from cora_jax.train.config import TrainConfig
from cora_jax.train.optim import OptimConfig

ML1M = "../shared/data/ml-1m-collm"     # the paper's split, beside the clone
LLM_7B = "models/vicuna-7b"             # placeholder; pass --llm /path/to/vicuna-7b (or Llama-2-7B)

# --- The paper's ML-1M configurations (SmolLM2 by default) ---------------------------------------
# Reference: lr 1e-3 warmup 200 steps from 1e-5, cosine to 8e-5; patience 20 evaluations.
# MF: r16, batch 8, 100 steps per "epoch". LightGCN / SASRec on ML-1M: r64, batch 16, 50 steps.
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

# --- CPU budget: the MF preset, cut to what a shared 2-core CPU does in 90 minutes ---------------
# ~7 s per training step of 8 prompts on SmolLM2; early stopping on the first 500 valid_small rows.
CORA_MF_ML1M_CPU = dataclasses.replace(
    CORA_MF_ML1M, out="runs/cora/mf-ml1m-cpu", max_wall_minutes=90.0, valid_limit=500, eval_every=100,
    optim=OptimConfig(lr=1e-3, warmup_steps=50, decay_steps=1_000), max_steps=1_000,
)


def _seven_b(cfg: TrainConfig, out: str) -> TrainConfig:
    """The same run on a Vicuna-7B / Llama-2-7B directory (d_model 4096 checked), bfloat16 LLM."""
    return dataclasses.replace(cfg, llm=LLM_7B, llm_dtype="bfloat16", out=out,
                               model=dataclasses.replace(cfg.model, d_model=4096))


# --- The embedded demo: ML-100K + SmolLM2 + MF, whole pipeline in < 20 min on 2 CPU cores -------
# Measured on the shared 2-core CPU: a training step of 8 prompts of ~90 tokens takes 3-9 s, scoring
# 32 prompts ~8-11 s, each new padded length compiles for ~30 s. So: 3 history titles (prompts ~90
# tokens instead of ~165), lengths padded to multiples of 32 (few shapes), the reference lr with a
# short schedule (warmup 20, cosine over 160 steps, at most 12 minutes of training), early stopping
# on 128 valid_small rows every 40 steps; `train.py demo` then scores 384 sampled test rows.
DEMO_ML100K = TrainConfig(
    data="ml100k", cf="runs/cf/ml100k-mf", out="runs/demo/cora-mf",
    model=CoRAConfig(rank=16, alpha=32.0),
    optim=OptimConfig(lr=1e-3, warmup_steps=20, decay_steps=160, grad_clip=1.0),
    max_titles=3, batch_size=8, eval_every=40, patience=2, max_steps=160, valid_limit=128,
    length_bucket=32, max_wall_minutes=12.0,
)

PRESETS: dict[str, TrainConfig] = {
    "demo-ml100k": DEMO_ML100K,
    "cora-mf-ml1m": CORA_MF_ML1M,
    "cora-lightgcn-ml1m": CORA_LIGHTGCN_ML1M,
    "cora-sasrec-ml1m": CORA_SASREC_ML1M,
    "cora-mf-ml1m-cpu": CORA_MF_ML1M_CPU,
    "cora-mf-ml1m-7b": _seven_b(CORA_MF_ML1M, "runs/cora/mf-ml1m-7b"),
    "cora-lightgcn-ml1m-7b": _seven_b(CORA_LIGHTGCN_ML1M, "runs/cora/lightgcn-ml1m-7b"),
    "cora-sasrec-ml1m-7b": _seven_b(CORA_SASREC_ML1M, "runs/cora/sasrec-ml1m-7b"),
}

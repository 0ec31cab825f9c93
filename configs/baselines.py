"""Presets of the paper's LLM baselines and ablations (docs/reference.md#llm-baselines), each a frozen
TrainConfig like the CoRA presets: `python train.py cora --preset NAME`.

Full schedules (the reference's settings; for a GPU): `<method>-ml1m`, CoLLM also as
`collm-{lightgcn,sasrec}-ml1m`. The same comparison on a CPU budget: `<method>-ml1m-cpu5`, every method
under one budget (SmolLM2, 3 history titles, 64 steps of batch 8,
the best of two evaluations on 128 valid_small rows); the Table-4 weight types `cora-mf-ml1m-cpu5-<targets>`
and the ID-only variants `{cora-mf,collm-mf,binllm}-ml1m-cpu5-idonly` on that budget too. On 160 steps:
`<method>-ml1m-cpu12`, `{cora-mf,collm-mf}-ml1m-cpu12-idonly` and `cora-mf-ml1m-cpu12-<targets>`.
CoLLM and PersonPrompt load the LoRA of a TALLRec run (stage 1: `tallrec-ml1m` for the full presets, the
64-step `tallrec-ml1m-cpu5` for both CPU budgets) and freeze it, so train that TALLRec first.
"""
from __future__ import annotations

import dataclasses

from configs.cora import CORA_MF_ML1M, ML1M
from cora_jax.baselines import MethodConfig
from cora_jax.cora import CoRAConfig
from cora_jax.train.config import TrainConfig
from cora_jax.train.optim import OptimConfig

TALLREC_RUN = "runs/baselines/tallrec-ml1m"
TALLREC_CPU_RUN = "runs/baselines/tallrec-ml1m-cpu5"

# --- The reference's settings (docs/reference.md#llm-baselines); CoRA-MF's schedule otherwise ----
_FULL = dataclasses.replace(CORA_MF_ML1M, cf="runs/cf/ml1m-mf")
FULL: dict[str, TrainConfig] = {
    "tallrec-ml1m": dataclasses.replace(_FULL, method=MethodConfig(kind="tallrec"), batch_size=16, out=TALLREC_RUN),
    "collm-mf-ml1m": dataclasses.replace(_FULL, method=MethodConfig(kind="collm", lora_from=TALLREC_RUN),
                                         out="runs/baselines/collm-mf-ml1m"),
    "prompt4nr-ml1m": dataclasses.replace(_FULL, method=MethodConfig(kind="prompt4nr"), out="runs/baselines/prompt4nr-ml1m",
                                          optim=dataclasses.replace(_FULL.optim, lr=1e-4, min_lr=8e-6)),
    "personprompt-ml1m": dataclasses.replace(_FULL, method=MethodConfig(kind="personprompt", lora_from=TALLREC_RUN),
                                             out="runs/baselines/personprompt-ml1m",
                                             optim=dataclasses.replace(_FULL.optim, lr=1e-2, min_lr=8e-4)),
    "binllm-ml1m": dataclasses.replace(_FULL, method=MethodConfig(kind="binllm"), out="runs/baselines/binllm-ml1m"),
}
# CoLLM on the other CF backbones: the same MLP over their (frozen) embeddings.
for _cf in ("lightgcn", "sasrec"):
    FULL[f"collm-{_cf}-ml1m"] = dataclasses.replace(FULL["collm-mf-ml1m"], cf=f"runs/cf/ml1m-{_cf}",
                                                    out=f"runs/baselines/collm-{_cf}-ml1m")

# --- One CPU budget for every method ------------------------------------------------------------
# A step budget, not a clock: every method sees the same 64 batches of 8 rows even when the CPU is shared.
CPU_BUDGET = TrainConfig(
    data=ML1M, cf="runs/cf/ml1m-mf", model=CoRAConfig(rank=16, alpha=32.0),
    optim=OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=64, grad_clip=1.0),
    max_titles=3, batch_size=8, eval_every=32, patience=2, max_steps=64, valid_limit=128,
    length_bucket=32, bucket_train=True,  # length-bucketed batches: the budget's measured results (docs/results.md)
)


def _cpu(name: str, method: MethodConfig, lr: float = 1e-3) -> TrainConfig:
    return dataclasses.replace(CPU_BUDGET, method=method, out=f"runs/baselines/{name}",
                               optim=dataclasses.replace(CPU_BUDGET.optim, lr=lr))


CPU: dict[str, TrainConfig] = {
    "cora-mf-ml1m-cpu5": _cpu("cora-mf-ml1m-cpu5", MethodConfig()),
    "tallrec-ml1m-cpu5": _cpu("tallrec-ml1m-cpu5", MethodConfig(kind="tallrec")),
    "collm-mf-ml1m-cpu5": _cpu("collm-mf-ml1m-cpu5", MethodConfig(kind="collm", lora_from=TALLREC_CPU_RUN)),
    "prompt4nr-ml1m-cpu5": _cpu("prompt4nr-ml1m-cpu5", MethodConfig(kind="prompt4nr"), lr=1e-4),
    "personprompt-ml1m-cpu5": _cpu("personprompt-ml1m-cpu5", MethodConfig(kind="personprompt", lora_from=TALLREC_CPU_RUN),
                                  lr=1e-2),
    "binllm-ml1m-cpu5": _cpu("binllm-ml1m-cpu5", MethodConfig(kind="binllm")),
}
# The same comparison on a longer step budget: 160 steps (the demo's schedule; wall times: docs/results.md).
CPU_LONG = dataclasses.replace(CPU_BUDGET, max_steps=160, eval_every=40,
                               optim=dataclasses.replace(CPU_BUDGET.optim, warmup_steps=20, decay_steps=160))
for _name in ("cora-mf", "collm-mf", "tallrec", "binllm", "prompt4nr", "personprompt"):
    _short = CPU[f"{_name}-ml1m-cpu5"]
    CPU[f"{_name}-ml1m-cpu12"] = dataclasses.replace(CPU_LONG, method=_short.method, out=f"runs/baselines/{_name}-ml1m-cpu12",
                                                     optim=dataclasses.replace(CPU_LONG.optim, lr=_short.optim.lr))
# Table 4: CoRA-MF's weight types on both budgets (qkvo is the plain preset).
for _budget in ("cpu5", "cpu12"):
    for _t in ("qkvof", "qkv", "qko", "qk"):
        _base = CPU[f"cora-mf-ml1m-{_budget}"]
        CPU[f"cora-mf-ml1m-{_budget}-{_t}"] = dataclasses.replace(
            _base, model=dataclasses.replace(_base.model, targets=_t), out=f"runs/baselines/cora-mf-ml1m-{_budget}-{_t}")
# Fig. 6: ID-only prompts. CoLLM's stage 1 stays the with-text TALLRec (ID-only TALLRec sees one constant prompt).
for _name in ("cora-mf-ml1m-cpu5", "collm-mf-ml1m-cpu5", "binllm-ml1m-cpu5", "cora-mf-ml1m-cpu12", "collm-mf-ml1m-cpu12"):
    CPU[f"{_name}-idonly"] = dataclasses.replace(CPU[_name], with_titles=False, out=f"runs/baselines/{_name}-idonly")

PRESETS: dict[str, TrainConfig] = {**FULL, **CPU}

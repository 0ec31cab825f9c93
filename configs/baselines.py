"""Presets of the paper's LLM baselines (docs/reference.md#llm-baselines), each a frozen TrainConfig like the
CoRA presets: `python train.py cora --preset NAME`.

Full schedules (the reference's settings; for a GPU): `<method>-ml1m`, CoLLM also as
`collm-{lightgcn,sasrec}-ml1m`. On the CPU step budgets of configs/cora.py (64, 160 or 480 batches of 8):
`<method>-ml1m-<N>steps`; on 480 steps also `collm-{lightgcn,sasrec}-ml1m-480steps`, and ID-only prompts
(Fig. 6) as `{collm-mf,binllm}-ml1m-64steps-idonly` and `collm-mf-ml1m-160steps-idonly`.
CoLLM and PersonPrompt load the LoRA of a TALLRec run and freeze it (stage 1), so train that TALLRec first:
`tallrec-ml1m` for the full presets, `tallrec-ml1m-64steps` for the 64- and 160-step budgets,
`tallrec-ml1m-480steps` for the 480-step one.
"""
from __future__ import annotations

import dataclasses

from configs.cora import BUDGETS, CORA_MF_ML1M
from cora_jax.baselines import MethodConfig
from cora_jax.train.config import TrainConfig

TALLREC_RUN = "runs/baselines/tallrec-ml1m"

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

# --- The CPU step budgets ------------------------------------------------------------------------
# (method, learning rate) as in the full presets; stage 1 of CoLLM / PersonPrompt: the budget's TALLRec (64 steps
# for the 160-step budget too, as its documented results were measured).
_METHODS = {"tallrec": ("tallrec", 1e-3), "collm-mf": ("collm", 1e-3), "prompt4nr": ("prompt4nr", 1e-4),
            "personprompt": ("personprompt", 1e-2), "binllm": ("binllm", 1e-3)}
_STAGE1_STEPS = {64: 64, 160: 64, 480: 480}


def _budget(steps: int, name: str, kind: str, lr: float, cf: str = "mf") -> TrainConfig:
    base = BUDGETS[steps]
    lora_from = f"runs/baselines/tallrec-ml1m-{_STAGE1_STEPS[steps]}steps" if kind in ("collm", "personprompt") else None
    return dataclasses.replace(base, method=MethodConfig(kind=kind, lora_from=lora_from), cf=f"runs/cf/ml1m-{cf}",
                               out=f"runs/baselines/{name}-ml1m-{steps}steps",
                               optim=dataclasses.replace(base.optim, lr=lr))


BUDGET: dict[str, TrainConfig] = {f"{name}-ml1m-{n}steps": _budget(n, name, kind, lr)
                                  for n in BUDGETS for name, (kind, lr) in _METHODS.items()}
for _cf in ("lightgcn", "sasrec"):
    BUDGET[f"collm-{_cf}-ml1m-480steps"] = _budget(480, f"collm-{_cf}", "collm", 1e-3, cf=_cf)
# Fig. 6: ID-only prompts. CoLLM's stage 1 stays the with-text TALLRec (ID-only TALLRec sees one constant prompt).
for _name in ("collm-mf-ml1m-64steps", "binllm-ml1m-64steps", "collm-mf-ml1m-160steps"):
    BUDGET[f"{_name}-idonly"] = dataclasses.replace(BUDGET[_name], with_titles=False, out=f"runs/baselines/{_name}-idonly")

PRESETS: dict[str, TrainConfig] = {**FULL, **BUDGET}

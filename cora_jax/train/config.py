"""The configuration of one CoRA training run (presets live in configs/)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from cora_jax.baselines import MethodConfig
from cora_jax.cora import CoRAConfig
from cora_jax.errors import CoraError, FlagError, flag_prefix
from cora_jax.train.mesh import MeshConfig
from cora_jax.train.optim import OptimConfig


class StoredConfigError(CoraError, ValueError):
    """A config.json of a run that this version cannot rebuild."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str = "ml100k"                # split folder ({train,valid,valid_small,test}.jsonl.gz) or "ml100k" (embedded)
    cf: str = "runs/cf/ml100k-mf"       # CF run directory written by `python train.py cf train ...`
    llm: str | None = None              # HF model dir (config.json + safetensors) or .gguf; None = embedded SmolLM2-135M
    out: str = "runs/cora/run"          # run directory: checkpoints/, metrics.jsonl, config.json, summary.json
    model: CoRAConfig = CoRAConfig()    # CoRA: generator sizes, rank, alpha, targets
    method: MethodConfig = MethodConfig()  # what is trained: CoRA (default) or an LLM baseline of cora_jax.baselines
    optim: OptimConfig = OptimConfig()  # AdamW + warmup-cosine schedule
    mesh: MeshConfig = MeshConfig()     # device mesh (default: FSDP over every device) and multi-host start-up
    llm_dtype: str = "float32"          # LLM weight + compute dtype (bfloat16 on a GPU); trainables stay float32
    max_titles: int = 10                # history titles in the prompt (most recent; reference 10)
    with_titles: bool = True            # False: the ID-only prompt (no titles; the paper's Fig. 6)
    batch_size: int = 8                 # training rows per step
    eval_batch_size: int = 32           # rows per scoring call
    eval_every: int = 100               # steps between valid_small evaluations (the reference's "epoch")
    patience: int = 20                  # stop after this many evaluations without a better valid AUC
    max_steps: int = 20_000             # hard cap on training steps
    max_wall_minutes: float | None = None  # stop (after an evaluation + checkpoint) when this process has run this long
    train_limit: int | None = None      # use only the first N train rows (file order); None = all
    valid_limit: int | None = None      # early-stop on N valid_small rows drawn with the seed; None = all
    length_bucket: int = 8              # pad every batch's length up to a multiple of this (fewer compiles)
    bucket_train: bool = False          # True: group training batches by prompt length (less padding, faster);
                                        # False: uniformly shuffled batches, as the reference
    calibrate_rows: int = 64            # train rows scored once before step 1 to start the loss offset at
                                        # logit(their positive rate) - their mean base "Yes" logit; 0 = start at 0
    seed: int = 2023                    # generator init, data order and dropout keys
    async_checkpoint: bool = True       # Orbax saves in a background thread
    progress: bool = True               # tqdm bars

    def validate(self) -> None:
        """Raises FlagError naming the flag of the first bad field."""
        for name in ("batch_size", "eval_batch_size", "eval_every", "patience", "max_steps", "length_bucket", "max_titles"):
            if getattr(self, name) < 1:
                raise FlagError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.calibrate_rows < 0:
            raise FlagError("calibrate_rows", f"must be >= 0, got {self.calibrate_rows}")
        for name in ("train_limit", "valid_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise FlagError(name, f"must be >= 1 or None, got {v}")
        if self.llm_dtype not in ("float32", "bfloat16", "float16"):
            raise FlagError("llm_dtype", f"must be float32, bfloat16 or float16, got {self.llm_dtype!r}")
        for name in ("model", "method", "optim", "mesh"):
            with flag_prefix(name):
                getattr(self, name).validate()


# Fields that may differ when resuming: budgets, presentation and the device mesh (checkpoints are
# restored straight into the shards of whatever mesh resumes), not what is computed.
RESUMABLE_FIELDS = ("out", "max_steps", "max_wall_minutes", "patience", "progress", "async_checkpoint", "mesh")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def with_defaults(saved: dict) -> dict:
    """A stored TrainConfig dict with the defaults of fields added after it was written (so that runs
    of an older version still resume and evaluate)."""
    return to_dict(from_dict(TrainConfig, saved, "stored config"))


def from_dict(cls: type, d: dict, where: str = "config") -> Any:
    """Rebuild a (nested) frozen config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise StoredConfigError(f"{where}: unknown field(s) {sorted(unknown)} for {cls.__name__}: written by another "
                                "version of cora_jax, or edited by hand")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value, tp = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            value = from_dict(tp, value, f"{where}.{f.name}")
        kwargs[f.name] = value
    return cls(**kwargs)

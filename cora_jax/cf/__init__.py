"""Collaborative-filtering backbones (MF, LightGCN, SASRec): models, trainer and the frozen encoder CoRA uses."""
from cora_jax.cf.cli import CFGridCommand, CFTrainCommand, main_cf, run_cf
from cora_jax.cf.frozen import FrozenCF, load_cf, save_cf, split_batch
from cora_jax.cf.models import MODEL_KINDS, CFBatch, CFConfigError, CFModelSpec, LightGCN, MF, SASRec, build_model
from cora_jax.cf.trainer import CFTrainConfig, grid_cf, train_cf

__all__ = [
    "CFBatch", "CFConfigError", "CFGridCommand", "CFModelSpec", "CFTrainCommand", "CFTrainConfig", "FrozenCF",
    "LightGCN", "MF", "MODEL_KINDS", "SASRec", "build_model", "grid_cf", "load_cf", "main_cf", "run_cf",
    "save_cf", "split_batch", "train_cf",
]

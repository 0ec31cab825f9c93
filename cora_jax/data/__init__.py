"""Data: CoLLM-layout splits (read, validate, build from raw), prompts. CLI: `python -m cora_jax.data`."""
from cora_jax.data.build import build_dataset, build_to, ensure_ml100k, resolve_data_arg
from cora_jax.data.load import load_dataset
from cora_jax.data.prompts import ITEM_SLOT, USER_SLOT, PromptConfig, render_prompt, split_prompts
from cora_jax.data.recipe import AmazonWindows, Interactions, MonthWindows, assemble
from cora_jax.data.split import DataError, Dataset, Split, dataset_stats
from cora_jax.data.write import write_dataset

__all__ = [
    "AmazonWindows", "DataError", "Dataset", "ITEM_SLOT", "Interactions", "MonthWindows", "PromptConfig", "USER_SLOT", "Split", "assemble",
    "build_dataset", "build_to", "dataset_stats", "ensure_ml100k", "load_dataset", "render_prompt", "resolve_data_arg",
    "split_prompts", "write_dataset",
]

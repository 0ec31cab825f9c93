"""Shared helpers of the tests/test_llm_*.py files (not a test module)."""
from __future__ import annotations

import gzip
import json
import pathlib

import jax
import numpy as np
from flax import nnx

from cora_jax.llm import Llama, LlamaConfig


def tiny_config(**kw) -> LlamaConfig:
    base = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=6, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_model(seed: int = 0, **kw) -> Llama:
    """Random tiny Llama whose norm weights are not all ones (so the norm is exercised)."""
    model = Llama(tiny_config(**kw), rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 100)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and path[-1] == "weight":
            key, sub = jax.random.split(key)
            var.set_value(1.0 + 0.1 * jax.random.normal(sub, var.shape))
    return model


def _render(his_titles, title) -> str:
    # docs/reference.md#prompt: last 10 non-empty history titles, quoted, oldest first; literal "\n"
    titles = [t for t in his_titles if t][-10:]
    items = ", ".join(f'"{t}"' for t in titles) if titles else "unkow"
    return ("#Question: A user has given high ratings to the following movies: " + items
            + f'. Leverage the information to predict whether the user would enjoy the movie titled "{title.strip()}"? '
            + 'Answer with "Yes" or "No". \\n#Answer:')


def ml1m_test_prompts(ml1m_dir: pathlib.Path, limit: int | None = None) -> list[str]:
    """The ML-1M test prompts: the data helper's renderer when it exists, else the reference prompt rendered here."""
    try:
        from cora_jax.data import PromptConfig, load_dataset, split_prompts
    except ImportError:
        prompts = []
        with gzip.open(ml1m_dir / "test.jsonl.gz", "rt") as f:
            for line in f:
                row = json.loads(line)
                prompts.append(_render(row["his_title"], row["title"]))
                if limit is not None and len(prompts) >= limit:
                    break
        return prompts
    ds = load_dataset(ml1m_dir)
    split = ds["test"] if limit is None else ds["test"].take(np.arange(limit))
    return split_prompts(ds, split, PromptConfig(domain=ds.domain))

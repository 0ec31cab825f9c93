"""Scoring rows on a device mesh: any scorer over every row of a split, in length order, and the frozen base
LLM's zero-shot scorer."""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from cora_jax.train import mesh as M
from cora_jax.train.batches import SplitInputs, make_batch


def score_rows(fn: Callable, inputs: SplitInputs, batch_size: int, pad_id: int, multiple: int,
               mesh: jax.sharding.Mesh, desc: str = "scoring", progress: bool = True) -> np.ndarray:
    """float32 [n] scores of every row; rows are scored in length order, padded to full batches.

    fn: batch of global (batch-sharded) jax.Arrays -> scores [B]; batch_size must be a multiple of
    M.batch_divisor(mesh) (make_run_mesh checks it).
    """
    order = np.argsort(inputs.lengths, kind="stable")
    out = np.zeros(len(inputs), np.float32)
    bar = tqdm(total=len(inputs), desc=desc, unit="row", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        full = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])  # one shape per length bucket
        b = M.shard_batch(make_batch(inputs, full, pad_id, multiple), mesh)
        out[idx] = M.to_host(fn(b))[: len(idx)]
        bar.update(len(idx))
    bar.close()
    return out


def base_score_fn(llm, answer_id: int, mesh: jax.sharding.Mesh) -> Callable:
    """Sharded zero-shot scorer of the frozen base LLM: batch -> [B] "Yes" logits. The LLM's
    weights are placed on `mesh` (and `llm` is pointed at them, so they are held once)."""
    graphdef, state = nnx.split(llm)
    shardings = M.state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    nnx.update(llm, state)
    answer = jnp.asarray([answer_id], jnp.int32)
    bsh = M.batch_sharding(mesh)

    @partial(jax.jit, in_shardings=(shardings, bsh, bsh), out_shardings=bsh)
    def fn(state, ids, mask):
        return nnx.merge(graphdef, state).score(ids, mask, answer)[:, 0]
    return lambda b: fn(state, b.ids, b.mask)

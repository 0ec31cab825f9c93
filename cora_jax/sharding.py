"""Logical-axis sharding: layers name the logical axes of what they create (the Llama's weights their `axes`
metadata, CoRA its factors and G), and two rule tables map logical names to the mesh axes of
cora_jax.train.mesh ("data", "fsdp", "tensor"). Changing the parallelism is editing a table, never a layer.

A logical axis is dropped (replicated) when its mesh axes are already used by an earlier dimension of the same
array or do not divide the dimension, so every model shape works on every mesh.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of axes, or None = replicated).
Rules = tuple[tuple[str, Any], ...]

PARAM_RULES: Rules = (
    ("layers", None),        # the scanned layer axis stays whole: scan slices it per step
    ("vocab", None),         # only K answer rows of the head are read; keep gathers cheap
    ("embed", "fsdp"),       # d_model: the largest axis every weight has -> FSDP split
    ("q_heads", "tensor"),   # attention heads x head_dim
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),       # FFN width
    ("norm", None),          # RMSNorm scales: tiny
    ("rank", None),          # r of G and P: tiny
    ("gen_out", "fsdp"),     # generator's final Linear output, d_model * r (33.6M weights at 7B)
)

ACTIVATION_RULES: Rules = (
    ("batch", BATCH_AXES),   # every per-sample array: ids, mask, e_u, e_i, labels, G, scores
    ("length", None),
    ("embed", None),
    ("rank", None),
)


def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh, rules: Rules) -> P:
    """PartitionSpec of an array with these logical axes under `rules`.

    A logical name absent from the rules, a mesh axis already used by an earlier dimension, or a
    mesh-axis product that does not divide the dimension leaves that dimension replicated.
    """
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match an array of shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def constrain(x: jax.Array, logical: Sequence[str | None], rules: Rules = ACTIVATION_RULES) -> jax.Array:
    """x pinned to the sharding its logical axes get under `rules` on the mesh in context (`jax.set_mesh`, as the
    sharded steps trace under it); unchanged outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(logical, x.shape, mesh, rules)))

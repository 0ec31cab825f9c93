"""Per-sample low-rank weight deltas of the Llama's projections (CoRA's collaborative weights, or LoRA).

A delta enters every targeted projection as
    y = x W + scale * ((dropout(x) A) B)
computed as a side branch on activations; W + A B is never materialised per sample.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from cora_jax.nn import dropout

from .config import LlamaConfig

# The projections of a decoder layer, by the input they read, in the order the layer runs them.
INPUTS: dict[str, tuple[str, ...]] = {
    "attn_in": ("q_proj", "k_proj", "v_proj"),  # the normed residual stream
    "attn_context": ("o_proj",),                # the attention heads' context
    "mlp_in": ("gate_proj", "up_proj"),         # the normed residual stream after attention
    "mlp_hidden": ("down_proj",),               # silu(gate) * up
}
TARGETS = tuple(t for targets in INPUTS.values() for t in targets)
INPUT_OF = {t: name for name, targets in INPUTS.items() for t in targets}


def a_key(a: dict[str, jax.Array], target: str) -> str:
    """The key of `a` holding the target's A: its own, else its input's."""
    return target if target in a else INPUT_OF[target]


@struct.dataclass
class LowRankDelta:
    """Low-rank weight delta for the targeted projections: y = x W + scale * (dropout(x) A) B.

    a[key]: key is a target (its own A) or an input of INPUTS (the A of each target reading that input
          that has no A of its own; dropout(x) A is then computed once for all of them);
          [d_in, r] (shared) | [B, d_in, r] (per sample), the same for all layers; with
          a_per_layer=True (or 4-D) one per layer: [L, d_in, r] | [L, B, d_in, r].
    b[t]: [L, r, d_out] (shared) | [L, B, r, d_out] (per sample), one per layer, per target.
    Targets absent from `b` get no delta. The targets of one input share one dropout mask.
    """

    a: dict[str, jax.Array]
    b: dict[str, jax.Array]
    scale: float = struct.field(pytree_node=False)
    dropout_rate: float = struct.field(pytree_node=False, default=0.0)
    a_per_layer: bool = struct.field(pytree_node=False, default=False)  # disambiguates 3-D A: [L,d,r] vs [B,d,r]

    def check(self, cfg: LlamaConfig, batch: int) -> None:
        """Raise ValueError naming the target whose factor shapes disagree with the model."""
        dims = cfg.target_dims()
        L = cfg.num_hidden_layers
        unknown = sorted(set(self.b) - set(TARGETS)) + sorted(set(self.a) - set(TARGETS) - set(INPUTS))
        if unknown:
            raise ValueError(f"LowRankDelta: unknown target {unknown[0]!r}; targets are {TARGETS}, inputs {tuple(INPUTS)}")
        unused = sorted(set(self.a) - {a_key(self.a, t) for t in self.b})
        if unused:
            raise ValueError(f"LowRankDelta: a[{unused[0]!r}] serves no target of b {sorted(self.b)}")
        for t, b in self.b.items():
            key = a_key(self.a, t)
            if key not in self.a:
                raise ValueError(f"LowRankDelta: b[{t!r}] has no A: give a[{t!r}] or a[{key!r}]")
            d_in, d_out = dims[t]
            a = self.a[key]
            per_layer = self.a_per_layer or a.ndim == 4
            core = a.shape[1:] if per_layer else a.shape
            if (per_layer and a.shape[0] != L) or len(core) not in (2, 3) or core[-2] != d_in \
                    or (len(core) == 3 and core[0] != batch):
                raise ValueError(f"LowRankDelta.a[{key!r}] has shape {a.shape}; {t} expects [{d_in}, r] or [{batch}, {d_in}, r]"
                                 f"{f', with a leading layer axis {L}' if per_layer else ''}")
            r = core[-1]
            if b.ndim not in (3, 4) or b.shape[0] != L or b.shape[-2:] != (r, d_out) or (b.ndim == 4 and b.shape[1] != batch):
                raise ValueError(f"LowRankDelta.b[{t!r}] has shape {b.shape}; expected [{L}, {r}, {d_out}] or [{L}, {batch}, {r}, {d_out}]")

    def layer_stacked(self) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """(the A arrays with a leading layer axis, all B arrays): what the layer scan slices."""
        return {k: a for k, a in self.a.items() if self.a_per_layer or a.ndim == 4}, dict(self.b)

    def layer(self, a_l: dict[str, jax.Array], b_l: dict[str, jax.Array], rng: jax.Array | None, dtype) -> LayerDelta:
        """One layer's delta from its slices of `layer_stacked()`; the other A arrays serve every layer.
        rng: that layer's dropout key (None: no dropout)."""
        a = {k: a_l.get(k, v) for k, v in self.a.items()}
        return LayerDelta(a, b_l, self.scale, self.dropout_rate, rng, dtype)


class LayerDelta:
    """One decoder layer's side branches: A (keyed as LowRankDelta.a) and B arrays of that layer."""

    def __init__(self, a: dict[str, jax.Array], b: dict[str, jax.Array], scale: float, dropout_rate: float,
                 rng: jax.Array | None, dtype):
        self.a, self.b, self.scale = a, b, scale
        self.rate, self.rng, self.dtype = dropout_rate, rng, dtype

    def branches(self, input_name: str, x_btd: jax.Array) -> dict[str, jax.Array]:
        """scale * (dropout(x) A) B [B, T, d_out] of each target that reads x (an input of INPUTS) and has
        a delta: one dropout mask for them all and one x A product per A."""
        targets = [t for t in INPUTS[input_name] if t in self.b]
        if not targets:
            return {}
        # each input draws its own mask, from the layer's key and the input's place in INPUTS
        key = None if self.rng is None else jax.random.fold_in(self.rng, list(INPUTS).index(input_name))
        x_btd = dropout(x_btd, self.rate, key)
        xa_by_key: dict[str, jax.Array] = {}
        out = {}
        for t in targets:
            key = a_key(self.a, t)
            if key not in xa_by_key:
                a = self.a[key].astype(self.dtype)
                spec = "btd,bdr->btr" if a.ndim == 3 else "btd,dr->btr"
                # the scale is applied on the rank-r activations, the cheapest place
                xa_by_key[key] = jnp.einsum(spec, x_btd, a) * jnp.asarray(self.scale, self.dtype)
            b = self.b[t].astype(self.dtype)
            out[t] = jnp.einsum("btr,bro->bto" if b.ndim == 3 else "btr,ro->bto", xa_by_key[key], b)
        return out


NO_DELTA = LayerDelta({}, {}, 0.0, 0.0, None, jnp.float32)

"""The CoRA scorer (docs/reference.md#model): a frozen Llama whose target projections get the
per-sample side branch y = x W + (alpha/r) * (dropout(x) G) P, with G from the generator.

Every target whose input width is d_model (q/k/v/o, gate/up) uses the sample's G. down_proj reads
the FFN width (intermediate_size), which G cannot multiply; under "qkvof" it therefore gets a
learned per-layer A [L, ffn, r] (LoRA-style init, shared by all samples) with its own zero-init P.
That keeps qkvof a strict superset of qkvo whose extra FFN branch starts at zero, like the others.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cora_jax.batch import Batch
from cora_jax.cora.generator import CollabWeightGenerator, GeneratorConfig
from cora_jax.errors import FlagError, flag_prefix
from cora_jax.llm import INPUT_OF, PROJECTION_AXES, Llama, LowRankDelta
from cora_jax.sharding import constrain

# Logical axes of the per-sample factors G [B, d_model, r] (batch-split by the activation rules).
G_AXES = ("batch", "embed", "rank")

# Weight-type presets of the paper's Table 4 -> the projections that get a side branch.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "qkvo": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qkvof": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "qko": ("q_proj", "k_proj", "o_proj"),
    "qk": ("q_proj", "k_proj"),
    "qv": ("q_proj", "v_proj"),  # LoRA's (TALLRec's) usual pair
}


@dataclasses.dataclass(frozen=True)
class CoRAConfig:
    generator: GeneratorConfig = GeneratorConfig()  # the collaborative weights generator
    rank: int = 16                  # r: columns of G, rows of every P
    alpha: float = 32.0             # branch scale is alpha / r
    branch_dropout: float = 0.05    # dropout on the side branch's input x
    targets: str = "qkvo"           # key of TARGET_PRESETS
    d_model: int | None = None      # expected LLM hidden size; None = take the LLM's (set it to catch a wrong --llm)
    cf_dim: int | None = None       # expected CF embedding size; None = take the CF checkpoint's

    def validate(self) -> None:
        if self.targets not in TARGET_PRESETS:
            raise FlagError("targets", f"names an unknown preset {self.targets!r}; "
                                       f"choose one of {', '.join(sorted(TARGET_PRESETS))}")
        if self.rank < 1:
            raise FlagError("rank", f"must be >= 1, got {self.rank}")
        if not 0.0 <= self.branch_dropout < 1.0:
            raise FlagError("branch_dropout", f"must be in [0, 1), got {self.branch_dropout}")
        with flag_prefix("generator"):
            self.generator.validate()


class Factors(nnx.Module):
    """One learned array per target projection, as attributes named after the target, each with its logical
    axes (the sharding rules read them)."""

    def __init__(self, arrays: dict[str, jax.Array], axes: dict[str, tuple[str, ...]]):
        for name, value in arrays.items():
            setattr(self, name, nnx.Param(value, axes=axes[name]))

    def get(self, name: str) -> jax.Array:
        return getattr(self, name)[...]


class CoRA(nnx.Module):
    """Frozen `llm` + trainable `generator`, `p` (and `own_a` for targets G cannot feed)."""

    def __init__(self, cfg: CoRAConfig, llm: Llama, cf_dim: int, answer_id: int, *, rngs: nnx.Rngs):
        cfg.validate()
        lc = llm.config
        if cfg.d_model is not None and cfg.d_model != lc.hidden_size:
            raise ValueError(
                f"CoRAConfig.d_model = {cfg.d_model} but the LLM's hidden_size is {lc.hidden_size}: "
                "the generator would emit G of the wrong shape (wrong --llm, or fix --model.d-model)"
            )
        if cfg.cf_dim is not None and cfg.cf_dim != cf_dim:
            raise ValueError(f"CoRAConfig.cf_dim = {cfg.cf_dim} but the CF checkpoint's embeddings have dim {cf_dim}")
        self.cfg = cfg
        self.answer_id = int(answer_id)
        self.targets = TARGET_PRESETS[cfg.targets]
        self.llm = llm
        self.generator = CollabWeightGenerator(cfg.generator, 2 * cf_dim, lc.hidden_size, cfg.rank, rngs=rngs)
        n_layers = lc.num_hidden_layers
        dims = {t: lc.target_dims()[t] for t in self.targets}
        self.p = Factors({t: jnp.zeros((n_layers, cfg.rank, d_out), jnp.float32) for t, (_, d_out) in dims.items()},
                         {t: ("layers", "rank", PROJECTION_AXES[t][1]) for t in dims})
        # PEFT's LoRA A init (kaiming_uniform a=sqrt(5)) = U(-1/sqrt(d_in), 1/sqrt(d_in)).
        own = {
            t: jax.random.uniform(rngs.params(), (n_layers, d_in, cfg.rank), jnp.float32, -1, 1) / math.sqrt(d_in)
            for t, (d_in, _) in dims.items() if d_in != lc.hidden_size
        }
        self.own_a = Factors(own, {t: ("layers", PROJECTION_AXES[t][0], "rank") for t in own})
        self.own_a_targets = tuple(own)
        # Added to the "Yes" logit inside the training loss only, never to the score (AUC is
        # shift-invariant): it absorbs the base LLM's global logit level (SmolLM2's "Yes" logit sits
        # near +15 on these prompts), which the adapter would otherwise spend its first steps undoing.
        self.loss_offset = nnx.Param(jnp.zeros((), jnp.float32))

    def delta(self, e_u_bd: jax.Array, e_i_bd: jax.Array, *, rng: jax.Array | None = None) -> LowRankDelta:
        """e_u_bd, e_i_bd: [B, cf_dim]. The per-sample delta (G shared by every layer and target)."""
        g_bdr = constrain(self.generator(jnp.concatenate([e_u_bd, e_i_bd], axis=-1), rng=rng), G_AXES)
        batch = g_bdr.shape[0]
        a = {}
        for t in self.targets:
            if t in self.own_a_targets:  # [L, d_in, r] -> [L, B, d_in, r]: 4-D marks it per layer beside the per-sample G
                own = self.own_a.get(t)
                a[t] = jnp.broadcast_to(own[:, None], (own.shape[0], batch, *own.shape[1:]))
            else:
                a[INPUT_OF[t]] = g_bdr  # G under the input's name: one x G product for all targets reading x
        b = {t: self.p.get(t) for t in self.targets}
        return LowRankDelta(a=a, b=b, scale=self.cfg.alpha / self.cfg.rank, dropout_rate=self.cfg.branch_dropout)

    def __call__(
        self, input_ids_bt: jax.Array, attention_mask_bt: jax.Array, e_u_bd: jax.Array, e_i_bd: jax.Array,
        *, rng: jax.Array | None = None,
    ) -> jax.Array:
        """Left-padded prompts [B, T] + CF embeddings [B, cf_dim] -> "Yes" logits [B]. rng=None: eval mode."""
        gen_rng = None if rng is None else jax.random.fold_in(rng, 0)
        branch_rng = None if rng is None else jax.random.fold_in(rng, 1)
        delta = self.delta(e_u_bd, e_i_bd, rng=gen_rng)
        answer = jnp.asarray([self.answer_id], jnp.int32)
        return self.llm.score(input_ids_bt, attention_mask_bt, answer, delta, dropout_rng=branch_rng)[:, 0]

    def batch_scores(self, b: Batch, *, rng: jax.Array | None = None) -> jax.Array:
        """__call__ on a Batch (ids, mask, e_u, e_i): the interface every recommender of the training loop
        has (cora_jax.baselines)."""
        return self(b.ids, b.mask, b.e_u, b.e_i, rng=rng)


# Trainable = every Param outside the LLM: generator, p, own_a, loss_offset. The LLM is frozen by construction.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("llm")))


def training_loss(model: nnx.Module, b: Batch, rng: jax.Array) -> jax.Array:
    """Mean BCE of the "Yes" logits plus the learned loss offset: the objective of CoRA and of every baseline
    (cora_jax.baselines), which share `batch_scores` and `loss_offset`."""
    return optax.sigmoid_binary_cross_entropy(model.batch_scores(b, rng=rng) + model.loss_offset[...], b.label).mean()

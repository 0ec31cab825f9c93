"""The paper's LLM baselines (docs/reference.md#llm-baselines) as recommenders with CoRA's interface: a frozen
Llama, a `loss_offset` Param (see cora_jax.cora.model) and `batch_scores(batch, rng)` ->
the "Yes" logit of every row. They share the data, prompt machinery, score, loss, metrics,
checkpointing and sharded steps of the training loop; only what is trained differs.

    tallrec       LoRA (r 8, alpha 16, dropout 0.05, q and v) on CoRA's prompt
    collm         CoLLM's prompt; its <UserID> / <TargetItemID> tokens get MLP(CF embedding) as input
                  embedding (Linear cf_dim -> 2560, ReLU, Linear -> d_model); LoRA loaded from a
                  TALLRec run and frozen (stage 2), or trained jointly when no run is given
    prompt4nr     CoLLM's prompt with 3 shared learnable soft tokens at each slot, trained with a LoRA
    personprompt  CoLLM's prompt; a learned input embedding per user id and per item id at the slots
    binllm        CoLLM's prompt with the slots written as text: binarised MF codes
                  (cora_jax.baselines.binary_codes), then a LoRA

A LoRA loaded from another run is held in `FrozenWeight` variables, which the TRAINABLE filter
(nnx.Param outside the LLM) leaves out: it is neither differentiated nor saved with this run.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from cora_jax.baselines.binary_codes import BinaryCodeConfig
from cora_jax.batch import Batch
from cora_jax.cora.model import TARGET_PRESETS
from cora_jax.errors import FlagError, flag_prefix
from cora_jax.llm import Llama, LowRankDelta

METHODS = ("cora", "tallrec", "collm", "prompt4nr", "personprompt", "binllm")
# Methods whose prompt is CoLLM's template with a user and an item slot.
SLOT_METHODS = ("collm", "prompt4nr", "personprompt", "binllm")
# Methods that read the frozen CF model (embeddings, or the MF codes).
CF_METHODS = ("cora", "collm", "binllm")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8                   # r
    alpha: float = 16.0             # scale alpha / r
    dropout: float = 0.05           # dropout on the LoRA input
    targets: str = "qv"             # key of cora_jax.cora.TARGET_PRESETS


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    kind: Literal["cora", "tallrec", "collm", "prompt4nr", "personprompt", "binllm"] = "cora"  # cora = TrainConfig.model
    lora: LoRAConfig = LoRAConfig()  # the baselines' LoRA (ignored by cora)
    lora_from: str | None = None    # run dir (TALLRec) whose best LoRA is loaded and frozen; None = train a fresh LoRA
    collm_hidden: int = 2560        # collm: hidden width of the CF-embedding MLP
    soft_tokens: int = 3            # prompt4nr: learnable tokens per slot
    binary: BinaryCodeConfig = BinaryCodeConfig()  # binllm: code length, code training, text format

    def validate(self) -> None:
        if self.kind not in METHODS:
            raise FlagError("kind", f"names an unknown method {self.kind!r}; choose one of {', '.join(METHODS)}")
        if self.lora.targets not in TARGET_PRESETS or "down_proj" in TARGET_PRESETS[self.lora.targets]:
            raise FlagError("lora.targets", f"{self.lora.targets!r} is not a preset without the FFN down projection; "
                                            f"choose one of {', '.join(sorted(k for k in TARGET_PRESETS if k != 'qkvof'))}")
        if self.lora.rank < 1:
            raise FlagError("lora.rank", f"must be >= 1, got {self.lora.rank}")
        if not 0.0 <= self.lora.dropout < 1.0:
            raise FlagError("lora.dropout", f"must be in [0, 1), got {self.lora.dropout}")
        for name in ("soft_tokens", "collm_hidden"):
            if getattr(self, name) < 1:
                raise FlagError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.lora_from is not None and self.kind == "cora":
            raise FlagError("lora_from", "is for the LoRA baselines (collm, personprompt, ...): CoRA has no LoRA to load")
        with flag_prefix("binary"):
            self.binary.validate()

    @property
    def tokens_per_slot(self) -> int:
        return self.soft_tokens if self.kind == "prompt4nr" else 1


class FrozenWeight(nnx.Variable):
    """A weight loaded from another run and kept fixed (not an nnx.Param: never trained or saved)."""


class LoRA(nnx.Module):
    """Per-layer LoRA factors shared by all samples: A [L, d_in, r] (PEFT's init), B [L, r, d_out] = 0."""

    def __init__(self, cfg: LoRAConfig, llm: Llama, *, rngs: nnx.Rngs,
                 loaded: dict[str, dict[str, jax.Array]] | None = None):
        lc = llm.config
        self.cfg = cfg
        self.targets = TARGET_PRESETS[cfg.targets]
        a, b = {}, {}
        for t in self.targets:
            d_in, d_out = lc.target_dims()[t]
            # PEFT's LoRA A init (kaiming_uniform a=sqrt(5)) = U(-1/sqrt(d_in), 1/sqrt(d_in)).
            a[t] = jax.random.uniform(rngs.params(), (lc.num_hidden_layers, d_in, cfg.rank), jnp.float32, -1, 1) / math.sqrt(d_in)
            b[t] = jnp.zeros((lc.num_hidden_layers, cfg.rank, d_out), jnp.float32)
        if loaded is not None:
            for name, arrays in (("a", a), ("b", b)):
                for t, want in arrays.items():
                    got = loaded.get(name, {}).get(t)
                    if got is None or got.shape != want.shape:
                        raise ValueError(f"the loaded LoRA has {name}[{t}] of shape {getattr(got, 'shape', None)}, "
                                         f"expected {want.shape} (LoRA config {cfg})")
            a, b = loaded["a"], loaded["b"]
        var = FrozenWeight if loaded is not None else nnx.Param
        self.a = nnx.Dict({t: var(jnp.asarray(v, jnp.float32)) for t, v in a.items()})
        self.b = nnx.Dict({t: var(jnp.asarray(v, jnp.float32)) for t, v in b.items()})

    def delta(self) -> LowRankDelta:
        return LowRankDelta(a={t: self.a[t][...] for t in self.targets}, b={t: self.b[t][...] for t in self.targets},
                            scale=self.cfg.alpha / self.cfg.rank, dropout_rate=self.cfg.dropout, a_per_layer=True)


def _vocab_rows(llm: Llama, n: int, rngs: nnx.Rngs) -> jax.Array:
    """n random rows of the LLM's embedding table: soft tokens that start at the scale of real ones."""
    table = llm.model.embed_tokens.embedding[...]
    return jnp.take(table, jax.random.randint(rngs.params(), (n,), 0, table.shape[0]), axis=0).astype(jnp.float32)


class LoRARecommender(nnx.Module):
    """The frozen LLM + a LoRA; subclasses add what goes into the prompt's slots."""

    def __init__(self, cfg: MethodConfig, llm: Llama, answer_id: int, *, rngs: nnx.Rngs,
                 loaded_lora: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.llm = llm
        self.answer_id = int(answer_id)
        self.lora = LoRA(cfg.lora, llm, rngs=rngs, loaded=loaded_lora)
        self.loss_offset = nnx.Param(jnp.zeros((), jnp.float32))  # as CoRA's: inside the loss only

    def slot_vectors(self, b: Batch) -> jax.Array | None:
        """[B, S, d_model] input embeddings of the S slot tokens; None = the prompt has no slots."""
        return None

    def batch_scores(self, b: Batch, *, rng: jax.Array | None = None) -> jax.Array:
        answer = jnp.asarray([self.answer_id], jnp.int32)
        vectors = self.slot_vectors(b)
        if vectors is None:
            return self.llm.score(b.ids, b.mask, answer, self.lora.delta(), dropout_rng=rng)[:, 0]
        embeds = self.llm.embed_slots(b.ids, b.slot, vectors)
        return self.llm.score(None, b.mask, answer, self.lora.delta(), input_embeds=embeds, dropout_rng=rng)[:, 0]


class TALLRec(LoRARecommender):
    """LoRA on the text prompt; also BinLLM, whose codes are already text in its prompt."""


class CoLLM(LoRARecommender):
    def __init__(self, cfg: MethodConfig, llm: Llama, answer_id: int, cf_dim: int, *, rngs: nnx.Rngs,
                 loaded_lora: dict | None = None):
        super().__init__(cfg, llm, answer_id, rngs=rngs, loaded_lora=loaded_lora)
        d = llm.config.hidden_size
        self.mlp_in = nnx.Linear(cf_dim, cfg.collm_hidden, rngs=rngs)
        self.mlp_out = nnx.Linear(cfg.collm_hidden, d, rngs=rngs)

    def slot_vectors(self, b: Batch) -> jax.Array:
        e = jnp.stack([b.e_u, b.e_i], axis=1)  # [B, 2, cf_dim]: slot 1 the user, slot 2 the item
        return self.mlp_out(jax.nn.relu(self.mlp_in(e)))


class Prompt4NR(LoRARecommender):
    def __init__(self, cfg: MethodConfig, llm: Llama, answer_id: int, *, rngs: nnx.Rngs,
                 loaded_lora: dict | None = None):
        super().__init__(cfg, llm, answer_id, rngs=rngs, loaded_lora=loaded_lora)
        self.soft = nnx.Param(_vocab_rows(llm, 2 * cfg.soft_tokens, rngs))  # user slot's tokens, then the item's

    def slot_vectors(self, b: Batch) -> jax.Array:
        return jnp.broadcast_to(self.soft[...], (b.ids.shape[0], *self.soft.shape))


class PersonPrompt(LoRARecommender):
    def __init__(self, cfg: MethodConfig, llm: Llama, answer_id: int, user_num: int, item_num: int, *,
                 rngs: nnx.Rngs, loaded_lora: dict | None = None):
        super().__init__(cfg, llm, answer_id, rngs=rngs, loaded_lora=loaded_lora)
        self.user_embedding = nnx.Param(_vocab_rows(llm, user_num, rngs))
        self.item_embedding = nnx.Param(_vocab_rows(llm, item_num, rngs))

    def slot_vectors(self, b: Batch) -> jax.Array:
        return jnp.stack([jnp.take(self.user_embedding[...], b.uid, axis=0),
                          jnp.take(self.item_embedding[...], b.iid, axis=0)], axis=1)

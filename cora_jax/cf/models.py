"""The three collaborative-filtering backbones (MF, LightGCN, SASRec) as Flax NNX modules.

All three share one interface, which the trainer and the frozen encoder used by CoRA rely on:

    model.user_repr(batch, key=None) -> [B, D]   user side (SASRec: encodes the history)
    model.item_repr(batch)           -> [B, D]   item side
    model.score(batch, key=None)     -> [B]      dot product of the two

`key` is a PRNG key for dropout; None means evaluation mode (only SASRec uses dropout).
Behaviour follows the reference (docs/reference.md#cf-backbones).
"""
from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cora_jax.errors import CoraError
from cora_jax.nn import dropout

MODEL_KINDS: tuple[str, ...] = ("mf", "lightgcn", "sasrec")
LN_EPS = 1e-8  # the reference SASRec's LayerNorm epsilon


class CFConfigError(CoraError, ValueError):
    """A CF model/training configuration that cannot work; the message names the field."""


@dataclasses.dataclass(frozen=True)
class CFModelSpec:
    """Everything needed to rebuild a CF model's parameter shapes (saved as JSON with each checkpoint)."""

    kind: str  # "mf" | "lightgcn" | "sasrec"
    dim: int  # embedding size
    user_num: int  # user id space, 0 = padding
    item_num: int  # item id space, 0 = padding
    n_layers: int = 2  # LightGCN propagation layers
    n_edges: int = 0  # LightGCN directed edge count (2 x distinct train positives); 0 otherwise
    seq_len: int = 0  # SASRec history length (25 in the reference); 0 for MF/LightGCN
    n_blocks: int = 2  # SASRec transformer blocks
    n_heads: int = 1  # SASRec attention heads
    dropout: float = 0.2  # SASRec dropout rate (embeddings, attention weights, FFN)

    def validate(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise CFConfigError(f"model kind {self.kind!r} is unknown; expected one of {MODEL_KINDS}")
        for field in ("dim", "user_num", "item_num"):
            if getattr(self, field) <= 0:
                raise CFConfigError(f"{field} must be > 0, got {getattr(self, field)}")
        if self.kind == "lightgcn" and self.n_layers < 0:
            raise CFConfigError(f"n_layers must be >= 0, got {self.n_layers}")
        if self.kind == "sasrec":
            if self.seq_len <= 0:
                raise CFConfigError(f"seq_len must be > 0 for sasrec, got {self.seq_len}")
            if self.n_blocks <= 0 or self.n_heads <= 0 or self.dim % self.n_heads:
                raise CFConfigError(
                    f"sasrec needs n_blocks > 0 and n_heads > 0 dividing dim; got n_blocks={self.n_blocks}, "
                    f"n_heads={self.n_heads}, dim={self.dim}"
                )
            if not 0.0 <= self.dropout < 1.0:
                raise CFConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@flax.struct.dataclass
class CFBatch:
    """A batch of labelled (user, item) pairs; `hist` is only read by SASRec."""

    uid: jax.Array  # int32 [B]
    iid: jax.Array  # int32 [B]
    hist: jax.Array  # int32 [B, T] last T history items, left padded with 0 ([B, 0] when unused)


class Graph(nnx.Variable):
    """Fixed (non-trainable) graph arrays of LightGCN; saved with the checkpoint, never optimised."""


def _dot(u_bd: jax.Array, i_bd: jax.Array) -> jax.Array:
    return jnp.sum(u_bd * i_bd, axis=-1)


def _padded_normal(key: jax.Array, n: int, dim: int, std: float) -> jax.Array:
    """N(0, std^2) rows with row 0 (padding) zero, like torch's Embedding(padding_idx=0)."""
    return (std * jax.random.normal(key, (n, dim), jnp.float32)).at[0].set(0.0)


class MF(nnx.Module):
    """Matrix factorisation: score = <user_emb[u], item_emb[i]>, no bias, N(0,1) init."""

    def __init__(self, spec: CFModelSpec, rngs: nnx.Rngs):
        self.user_emb = nnx.Param(_padded_normal(rngs.params(), spec.user_num, spec.dim, 1.0))
        self.item_emb = nnx.Param(_padded_normal(rngs.params(), spec.item_num, spec.dim, 1.0))

    def user_repr(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        return self.user_emb[...][batch.uid]

    def item_repr(self, batch: CFBatch) -> jax.Array:
        return self.item_emb[...][batch.iid]

    def score(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        return _dot(self.user_repr(batch), self.item_repr(batch))


def bipartite_edges(uid: np.ndarray, iid: np.ndarray, label: np.ndarray, user_num: int, item_num: int):
    """Normalised edge list of the train-positives graph over nodes [users | items].

    Returns (src, dst, weight), each [E] with E = 2 x distinct positive pairs; weight is the
    symmetric normalisation 1/sqrt(deg(src) deg(dst)) of D^-1/2 A D^-1/2 (A binary).
    """
    pos = np.asarray(label) == 1
    pairs = np.unique(np.stack([np.asarray(uid)[pos], np.asarray(iid)[pos]], axis=1).astype(np.int64), axis=0)
    u_node = pairs[:, 0]
    i_node = pairs[:, 1] + user_num
    deg = np.bincount(np.concatenate([u_node, i_node]), minlength=user_num + item_num).astype(np.float64)
    src = np.concatenate([u_node, i_node]).astype(np.int32)
    dst = np.concatenate([i_node, u_node]).astype(np.int32)
    weight = (1.0 / np.sqrt(deg[src] * deg[dst])).astype(np.float32)
    return src, dst, weight


class LightGCN(nnx.Module):
    """LightGCN: K rounds of normalised neighbour averaging; output = mean of layers 0..K."""

    def __init__(self, spec: CFModelSpec, rngs: nnx.Rngs, edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        self.user_num = spec.user_num
        self.n_nodes = spec.user_num + spec.item_num
        self.n_layers = spec.n_layers
        self.user_emb = nnx.Param(0.1 * jax.random.normal(rngs.params(), (spec.user_num, spec.dim), jnp.float32))
        self.item_emb = nnx.Param(0.1 * jax.random.normal(rngs.params(), (spec.item_num, spec.dim), jnp.float32))
        if edges is None:  # shapes only; real values come from a checkpoint
            edges = (np.zeros(spec.n_edges, np.int32), np.zeros(spec.n_edges, np.int32), np.zeros(spec.n_edges, np.float32))
        src, dst, weight = edges
        if len(src) != spec.n_edges:
            raise CFConfigError(f"LightGCN spec says n_edges={spec.n_edges} but the graph has {len(src)} edges")
        self.src = Graph(jnp.asarray(src, jnp.int32))
        self.dst = Graph(jnp.asarray(dst, jnp.int32))
        self.weight = Graph(jnp.asarray(weight, jnp.float32))

    def propagate(self, x_nd: jax.Array) -> jax.Array:
        """One sparse step x -> D^-1/2 A D^-1/2 x via a gather and a segment sum (no dense N x N matrix)."""
        msg_ed = x_nd[self.src[...]] * self.weight[...][:, None]
        return jax.ops.segment_sum(msg_ed, self.dst[...], num_segments=self.n_nodes)

    def tables(self) -> tuple[jax.Array, jax.Array]:
        """Final (user [U, D], item [I, D]) tables: mean of the K+1 layer outputs."""
        x_nd = jnp.concatenate([self.user_emb[...], self.item_emb[...]], axis=0)
        total_nd = x_nd
        for _ in range(self.n_layers):
            x_nd = self.propagate(x_nd)
            total_nd = total_nd + x_nd
        out_nd = total_nd / (self.n_layers + 1)
        return out_nd[: self.user_num], out_nd[self.user_num :]

    def user_repr(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        return self.tables()[0][batch.uid]

    def item_repr(self, batch: CFBatch) -> jax.Array:
        return self.tables()[1][batch.iid]

    def score(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        users_ud, items_id = self.tables()  # one propagation for both sides
        return _dot(users_ud[batch.uid], items_id[batch.iid])


def _xavier(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Xavier-normal, the reference's init for every SASRec weight matrix and embedding."""
    return math.sqrt(2.0 / (shape[0] + shape[1])) * jax.random.normal(key, shape, jnp.float32)


class Dense(nnx.Module):
    def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs):
        self.w = nnx.Param(_xavier(rngs.params(), (d_in, d_out)))
        self.b = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        return x_btd @ self.w[...] + self.b[...]


class SASRecBlock(nnx.Module):
    """LN -> causal MHA (query = LN(x), key/value = x, residual from LN(x)) -> LN -> FFN (+ its input)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, rngs: nnx.Rngs):
        self.n_heads = n_heads
        self.dropout = dropout
        self.attn_ln = nnx.LayerNorm(dim, epsilon=LN_EPS, rngs=rngs)
        self.q, self.k, self.v, self.o = (Dense(dim, dim, rngs) for _ in range(4))
        self.ffn_ln = nnx.LayerNorm(dim, epsilon=LN_EPS, rngs=rngs)
        self.ffn1 = Dense(dim, dim, rngs)
        self.ffn2 = Dense(dim, dim, rngs)

    def __call__(self, x_btd: jax.Array, mask_bqt: jax.Array, key: jax.Array | None, last_only: bool = False) -> jax.Array:
        """x_btd: [B, T, D]; mask_bqt: [B, Q, T] allowed (query, key) pairs, Q = 1 when last_only.

        last_only computes queries, residual and FFN for the last position alone (keys and values
        still span all T): the user representation needs nothing else, and it saves a third of the work.
        """
        keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
        b, t, d = x_btd.shape
        h = self.n_heads
        q_bqd = self.attn_ln(x_btd[:, -1:] if last_only else x_btd)
        q_bhqk = self.q(q_bqd).reshape(b, -1, h, d // h).transpose(0, 2, 1, 3)
        k_bhtk = self.k(x_btd).reshape(b, t, h, d // h).transpose(0, 2, 1, 3)
        v_bhtk = self.v(x_btd).reshape(b, t, h, d // h).transpose(0, 2, 1, 3)
        logits_bhqt = jnp.einsum("bhqk,bhsk->bhqs", q_bhqk, k_bhtk) / math.sqrt(d // h)
        logits_bhqt = jnp.where(mask_bqt[:, None], logits_bhqt, -jnp.inf)
        attn_bhqt = dropout(jax.nn.softmax(logits_bhqt, axis=-1), self.dropout, keys[0])
        ctx_bqd = jnp.einsum("bhqs,bhsk->bhqk", attn_bhqt, v_bhtk).transpose(0, 2, 1, 3).reshape(b, -1, d)
        x_bqd = q_bqd + self.o(ctx_bqd)
        y_bqd = self.ffn_ln(x_bqd)
        f_bqd = jax.nn.relu(dropout(self.ffn1(y_bqd), self.dropout, keys[1]))
        return y_bqd + dropout(self.ffn2(f_bqd), self.dropout, keys[2])


class SASRec(nnx.Module):
    """SASRec encoder; user = output at the last position, item = raw item-embedding row.

    Positions are right-aligned: a [B, T] input (T <= seq_len) uses position ids seq_len-T..seq_len-1,
    so the last history item always sits at position seq_len-1 (as with fixed-length left padding).
    """

    def __init__(self, spec: CFModelSpec, rngs: nnx.Rngs):
        self.seq_len = spec.seq_len
        self.dim = spec.dim
        self.dropout = spec.dropout
        self.item_emb = nnx.Param(_xavier(rngs.params(), (spec.item_num, spec.dim)))
        self.pos_emb = nnx.Param(_xavier(rngs.params(), (spec.seq_len, spec.dim)))
        self.blocks = nnx.List([SASRecBlock(spec.dim, spec.n_heads, spec.dropout, rngs) for _ in range(spec.n_blocks)])
        self.final_ln = nnx.LayerNorm(spec.dim, epsilon=LN_EPS, rngs=rngs)

    def encode_sequence(self, hist_bt: jax.Array, key: jax.Array | None = None, last_only: bool = False) -> jax.Array:
        """hist_bt: int32 [B, T] item ids, 0 = padding. Returns [B, T, D] (padded positions hold the
        final LayerNorm of 0), or [B, 1, D] for the last position only when last_only."""
        b, t = hist_bt.shape
        if t > self.seq_len:
            raise ValueError(f"SASRec history length {t} exceeds the model's seq_len {self.seq_len}")
        keys = [None] * (len(self.blocks) + 1) if key is None else list(jax.random.split(key, len(self.blocks) + 1))
        valid_bt = hist_bt != 0
        x_btd = self.item_emb[...][hist_bt] * math.sqrt(self.dim)
        x_btd = x_btd + self.pos_emb[...][self.seq_len - t :][None]
        x_btd = dropout(x_btd, self.dropout, keys[0]) * valid_bt[..., None]
        causal_tt = jnp.tril(jnp.ones((t, t), bool))
        # Padded keys are masked; the diagonal stays open so padded queries have a finite softmax
        # (their outputs are zeroed anyway, and a real query's diagonal is a real key).
        mask_btt = causal_tt[None] & (valid_bt[:, None, :] | jnp.eye(t, dtype=bool)[None])
        for n, (block, k) in enumerate(zip(self.blocks, keys[1:])):
            last = last_only and n == len(self.blocks) - 1
            mask = mask_btt[:, -1:] if last else mask_btt
            x_btd = block(x_btd, mask, k, last_only=last) * (valid_bt[:, -1:, None] if last else valid_bt[..., None])
        return self.final_ln(x_btd)

    def user_repr(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        return self.encode_sequence(batch.hist, key, last_only=True)[:, -1]

    def item_repr(self, batch: CFBatch) -> jax.Array:
        return self.item_emb[...][batch.iid]

    def score(self, batch: CFBatch, key: jax.Array | None = None) -> jax.Array:
        return _dot(self.user_repr(batch, key), self.item_repr(batch))


CFModel = MF | LightGCN | SASRec


def build_model(spec: CFModelSpec, seed: int = 0, edges=None) -> CFModel:
    """A freshly initialised model for `spec`; LightGCN takes its (src, dst, weight) graph in `edges`."""
    spec.validate()
    rngs = nnx.Rngs(params=seed)
    if spec.kind == "mf":
        return MF(spec, rngs)
    if spec.kind == "lightgcn":
        return LightGCN(spec, rngs, edges)
    return SASRec(spec, rngs)

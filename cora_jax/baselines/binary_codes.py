"""BinLLM baseline: binarised collaborative codes of a frozen MF model, written into the prompt as text.

BinLLM ("Text-like Encoding of Collaborative Information in Large Language Models for Recommendation")
turns each user's and item's MF embedding into a short binary code, so that collaborative information
can enter an LLM as ordinary text instead of a soft-prompt vector. One linear layer shared by users and
items maps an embedding e to b = sign(tanh(e W + c)) in {-1, +1}^bits; it is trained (MF frozen) so that
the agreement of two codes, scale * mean(b_u * b_i) + bias, predicts the (user, item) label. The code
is then shown either as a bit string ("0110...") or dot-decimal ("105.3.255.0", 8 bits per number).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import zipfile
from typing import TYPE_CHECKING, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from cora_jax.cf.frozen import check_ids
from cora_jax.cf.trainer import epoch_batches
from cora_jax.errors import FlagError
from cora_jax.metrics import auc

if TYPE_CHECKING:
    from cora_jax.cf import FrozenCF
    from cora_jax.data import Split

TEXT_FORMATS = ("bits", "dotdecimal")
SCALE_INIT = 5.0  # mean(b_u * b_i) lies in [-1, 1]; a larger scale lets the logit reach confident values


@dataclasses.dataclass(frozen=True)
class BinaryCodeConfig:
    """Hyper-parameters of the binariser and how its codes are written as text."""

    bits: int = 32  # code length; a multiple of 8 so dot-decimal text has whole bytes
    epochs: int = 5  # passes over the train split
    lr: float = 1e-3  # AdamW learning rate (ML-1M valid AUC of the codes: 0.595 here vs 0.530 at 1e-2 x 20 epochs, which overfits)
    batch_size: int = 1024  # rows per optimiser step
    weight_decay: float = 0.0  # AdamW decoupled decay of the projection matrix
    seed: int = 2023  # projection init and minibatch shuffling
    text: Literal["bits", "dotdecimal"] = "bits"  # default text format of the codes in prompts

    def validate(self) -> None:
        if self.bits <= 0 or self.bits % 8:
            raise FlagError("bits", f"must be a positive multiple of 8, got {self.bits}")
        for field in ("epochs", "batch_size"):
            if getattr(self, field) <= 0:
                raise FlagError(field, f"must be > 0, got {getattr(self, field)}")
        if not self.lr > 0:
            raise FlagError("lr", f"must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise FlagError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.text not in TEXT_FORMATS:
            raise FlagError("text", f"{self.text!r} is unknown; choose one of {', '.join(TEXT_FORMATS)}")


@jax.custom_jvp
def st_sign(x: jax.Array) -> jax.Array:
    """sign(tanh(x)) in {-1, +1} (sign(0) := +1) whose gradient is tanh'(x): the straight-through estimator."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


@st_sign.defjvp
def _st_sign_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return st_sign(x), dx * (1.0 - jnp.tanh(x) ** 2)


class Binariser(nnx.Module):
    """Shared projection dim -> bits plus the scalar scale and bias of the agreement score."""

    def __init__(self, dim: int, bits: int, rngs: nnx.Rngs):
        self.proj = nnx.Linear(dim, bits, rngs=rngs)
        self.scale = nnx.Param(jnp.asarray(SCALE_INIT, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(0.0, jnp.float32))

    def codes(self, e_nd: jax.Array) -> jax.Array:
        """[n, bits] in {-1, +1}."""
        return st_sign(self.proj(e_nd))

    def score(self, e_u: jax.Array, e_i: jax.Array) -> jax.Array:
        return self.scale[...] * jnp.mean(self.codes(e_u) * self.codes(e_i), axis=-1) + self.bias[...]


def code_text(code_row: np.ndarray, text: str) -> str:
    """One code ([bits] of 0/1) as prompt text: "bits" -> "0110...", "dotdecimal" -> "105.3.255.0" (MSB first)."""
    row = np.asarray(code_row)
    if row.ndim != 1 or not np.isin(row, (0, 1)).all():
        raise ValueError(f"a code row must be a 1-d array of 0/1 values, got shape {row.shape}")
    if text == "bits":
        return (row.astype(np.uint8) + ord("0")).tobytes().decode("ascii")
    if text == "dotdecimal":
        if len(row) % 8:
            raise ValueError(f"dotdecimal text needs a multiple of 8 bits, got {len(row)}")
        return ".".join(str(byte) for byte in np.packbits(row.astype(np.uint8)))
    raise ValueError(f"text format {text!r} is unknown; expected one of {TEXT_FORMATS}")


@dataclasses.dataclass
class BinaryCodes:
    """Codes of every user and item id (row = id, row 0 = padding) and how they were trained."""

    user: np.ndarray  # uint8 [user_num, bits] in {0, 1}
    item: np.ndarray  # uint8 [item_num, bits] in {0, 1}
    metrics: dict  # train_auc, valid_auc (when a valid split was given), train_loss, scale, bias, train_s
    config: BinaryCodeConfig = dataclasses.field(default_factory=BinaryCodeConfig)

    def user_text(self, uid: int, text: str | None = None) -> str:
        return code_text(self.user[uid], text or self.config.text)

    def item_text(self, iid: int, text: str | None = None) -> str:
        return code_text(self.item[iid], text or self.config.text)

    def scores(self, uid: np.ndarray, iid: np.ndarray) -> np.ndarray:
        """float32 [n]: the trained agreement score of (uid, iid) pairs, computed from the stored codes."""
        agree = np.mean((2.0 * self.user[uid] - 1.0) * (2.0 * self.item[iid] - 1.0), axis=-1)
        return (self.metrics["scale"] * agree + self.metrics["bias"]).astype(np.float32)


def _mf_tables(cf: "FrozenCF") -> tuple[jax.Array, jax.Array]:
    if cf.kind != "mf":
        raise ValueError(f"BinLLM binarises an MF model; got a CF model of kind {cf.kind!r}")
    return cf.model.user_emb[...], cf.model.item_emb[...]


def _epoch_fn(graphdef, tx: optax.GradientTransformation):
    """Jitted epoch: scan of AdamW steps over [S, B] row indices (mask marks real rows of the last batch)."""

    @jax.jit
    def run_epoch(params, opt_state, tables, data, idx_sb, mask_sb):
        users, items = tables

        def step(carry, xs):
            params, opt_state = carry
            idx_b, mask_b = xs

            def loss_fn(p):
                logits_b = nnx.merge(graphdef, p).score(users[data["uid"][idx_b]], items[data["iid"][idx_b]])
                per_row = optax.sigmoid_binary_cross_entropy(logits_b, data["label"][idx_b])
                return jnp.sum(per_row * mask_b) / jnp.sum(mask_b)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (idx_sb, mask_sb))
        return params, opt_state, jnp.mean(losses)

    return run_epoch


def train_binary_codes(
    cf: "FrozenCF", train: "Split", valid: "Split | None", cfg: BinaryCodeConfig, progress: bool = True
) -> BinaryCodes:
    """Train the binariser on `train` rows (MF frozen); return the codes of every user and item id."""
    t0 = time.perf_counter()
    cfg.validate()
    tables = _mf_tables(cf)
    for split in (train, valid) if valid is not None else (train,):
        check_ids(cf.spec, split)

    graphdef, params = nnx.split(Binariser(cf.dim, cfg.bits, nnx.Rngs(params=cfg.seed)))
    # only the projection matrix is decayed: shrinking scale/bias would just bias the logit towards 0
    tx = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay, mask=lambda p: jax.tree.map(lambda a: a.ndim == 2, p))
    opt_state = tx.init(params)
    run_epoch = _epoch_fn(graphdef, tx)
    data = {"uid": jnp.asarray(train.uid, jnp.int32), "iid": jnp.asarray(train.iid, jnp.int32),
            "label": jnp.asarray(train.label, jnp.float32)}

    rng = np.random.default_rng(cfg.seed)
    loss = float("nan")
    with tqdm(range(cfg.epochs), desc=f"binary codes ({cfg.bits} bits)", disable=not progress, dynamic_ncols=True) as bar:
        for _ in bar:
            idx_sb, mask_sb = epoch_batches(rng, len(train), cfg.batch_size)
            params, opt_state, loss = run_epoch(params, opt_state, tables, data, idx_sb, mask_sb)
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"binary-code training diverged (loss {loss}); lower lr={cfg.lr}")
            bar.set_postfix(loss=f"{loss:.4f}")

    model = nnx.merge(graphdef, params)
    to_bits = jax.jit(lambda e: model.codes(e) > 0)
    codes = BinaryCodes(
        user=np.asarray(to_bits(tables[0]), np.uint8), item=np.asarray(to_bits(tables[1]), np.uint8),
        metrics={"train_loss": loss, "scale": float(model.scale[...]), "bias": float(model.bias[...])}, config=cfg,
    )
    # AUCs of the score the stored codes give, i.e. of exactly what the prompt text carries
    codes.metrics["train_auc"] = auc(train.label, codes.scores(train.uid, train.iid))
    if valid is not None:
        codes.metrics["valid_auc"] = auc(valid.label, codes.scores(valid.uid, valid.iid))
    codes.metrics["train_s"] = round(time.perf_counter() - t0, 2)
    return codes


def save_codes(codes: BinaryCodes, path) -> None:
    """One .npz (no pickle): user, item (uint8), config and metrics (JSON strings)."""
    with open(path, "wb") as fh:  # a file object keeps np.savez from appending ".npz" to the name
        np.savez(
            fh, user=codes.user, item=codes.item,
            config=np.asarray(json.dumps(dataclasses.asdict(codes.config))),
            metrics=np.asarray(json.dumps(codes.metrics)),
        )


def _read_array(z, path, field: str) -> np.ndarray:
    if field not in z.files:
        raise ValueError(f"{path}: field {field!r} is missing")
    try:
        return z[field]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # object dtype, bad CRC, cut member
        raise ValueError(f"{path}: field {field!r} cannot be read: {err}") from None


def _read_json(z, path, field: str) -> dict:
    arr = _read_array(z, path, field)
    if arr.shape != () or arr.dtype.kind != "U":
        raise ValueError(f"{path}: field {field!r} must be a JSON string, got dtype {arr.dtype} shape {arr.shape}")
    try:
        value = json.loads(str(arr))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: field {field!r} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: field {field!r} must be a JSON object")
    return value


def load_codes(path) -> BinaryCodes:
    """Read and check a file written by save_codes; problems raise naming the file and the field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: binary-code file not found")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file: {err}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive, got a single array")
    with z:
        fields = _read_json(z, path, "config")
        known = {f.name for f in dataclasses.fields(BinaryCodeConfig)}
        if set(fields) - known:
            raise ValueError(f"{path}: field 'config' has unknown key(s) {sorted(set(fields) - known)}")
        try:
            cfg = BinaryCodeConfig(**fields)
            cfg.validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: field 'config': {err}") from None
        metrics = _read_json(z, path, "metrics")
        for key in ("scale", "bias"):
            if not isinstance(metrics.get(key), (int, float)):
                raise ValueError(f"{path}: field 'metrics' lacks the number {key!r}")
        arrays = {}
        for field in ("user", "item"):
            arr = _read_array(z, path, field)
            if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != cfg.bits or len(arr) == 0:
                raise ValueError(
                    f"{path}: field {field!r} must be uint8 [n > 0, bits={cfg.bits}], got {arr.dtype} {arr.shape}"
                )
            if arr.max() > 1:
                raise ValueError(f"{path}: field {field!r} holds values other than 0 and 1")
            arrays[field] = arr
    return BinaryCodes(user=arrays["user"], item=arrays["item"], metrics=metrics, config=cfg)

"""Llama-family configuration: built from a Hugging Face `config.json` (Llama, Mistral, Qwen2) or from
GGUF metadata (llama, qwen2).

Every size the model uses is a field here, so the layers hold no magic numbers. Compute dtype,
parameter dtype and the per-layer rematerialisation policy are config fields too, so the same
model runs float32 on CPU and bfloat16 on a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp

from .errors import ConfigError
from .gguf_file import gguf_reader, gguf_value

# Logical (input, output) axes of each projection's kernel; the mesh rules (cora_jax.sharding) map them to
# mesh axes, and a low-rank factor of a projection takes its axes from here.
PROJECTION_AXES = {
    "q_proj": ("embed", "q_heads"), "k_proj": ("embed", "kv_heads"), "v_proj": ("embed", "kv_heads"),
    "o_proj": ("q_heads", "embed"), "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
}

# The rotary variants an HF Llama / Llama-2 / Llama-3 / Vicuna config can carry that we implement.
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# Per-layer rematerialisation policies (see model._remat_policy).
REMAT_POLICIES = ("none", "full", "dots")
# Attention implementations (cora_jax/llm/attention.py).
ATTENTION_IMPLS = ("reference", "dot_product")
# Decoders of the Llama layout we build: HF config.json `model_type`s and GGUF `general.architecture`s.
HF_MODEL_TYPES = ("llama", "mistral", "qwen2")
GGUF_ARCHITECTURES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters` (minus rope_theta, which lives on LlamaConfig)."""

    rope_type: str = "default"                 # one of ROPE_TYPES
    factor: float = 1.0                        # context-extension factor (linear, dynamic, llama3)
    original_max_position_embeddings: int | None = None  # llama3: pre-extension context
    low_freq_factor: float = 1.0               # llama3: wavelengths above orig/low_freq_factor are scaled fully
    high_freq_factor: float = 4.0              # llama3: wavelengths below orig/high_freq_factor are kept

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any] | None, where: str = "config") -> "RopeScaling | None":
        if not d:
            return None
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"{where}: rope_type {rope_type!r} is not supported (supported: {ROPE_TYPES})")
        if rope_type == "default":
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_type"}
        kwargs = {k: d[k] for k in names if d.get(k) is not None}
        return cls(rope_type=rope_type, **kwargs)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Sizes and numerics of a Llama decoder (names follow HF's LlamaConfig)."""

    vocab_size: int                            # rows of embed_tokens / lm_head
    hidden_size: int                           # d_model
    intermediate_size: int                     # SwiGLU width
    num_hidden_layers: int                     # decoder layers L
    num_attention_heads: int                   # query heads H
    num_key_value_heads: int                   # key/value heads (H: MHA, 1: MQA, else GQA)
    head_dim: int | None = None                # per-head width; None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6                 # RMSNorm epsilon
    rope_theta: float = 10000.0                # RoPE base
    rope_scaling: RopeScaling | None = None    # None: plain RoPE
    tie_word_embeddings: bool = False          # lm_head shares embed_tokens
    max_position_embeddings: int = 2048        # trained context (dynamic RoPE threshold)
    attention_bias: bool = False               # biases on q/k/v/o projections
    mlp_bias: bool = False                     # biases on gate/up/down projections
    qkv_bias: bool = False                     # biases on q/k/v but not o (Qwen2)
    sliding_window: int | None = None          # a query sees at most this many most recent keys (Mistral); None: all
    rope_freq_factors: tuple[float, ...] | None = None  # divisors of the RoPE frequencies (GGUF rope_freqs tensor)
    bos_token_id: int | None = 1               # informative; the tokenizer decides what it prepends
    eos_token_id: int | None = 2               # informative
    dtype: str = "float32"                     # compute dtype of activations and matmuls
    param_dtype: str = "float32"               # storage dtype of the weights
    remat: str = "none"                        # per-layer rematerialisation: "none" | "full" | "dots"
    attention_impl: str = "reference"          # "reference" | "dot_product" (jax.nn.dot_product_attention: cuDNN on a GPU)

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window {self.sliding_window} must be at least 1 (or None: no window)")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ConfigError(f"rope_freq_factors has {len(self.rope_freq_factors)} entries, "
                              f"head_dim {self.head_dim} needs {self.head_dim // 2}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        for field in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError as e:
                raise ConfigError(f"{field}={getattr(self, field)!r} is not a dtype") from e

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    def target_dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of every projection a low-rank delta may target."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    def num_params(self) -> int:
        """Parameter count (embeddings and LM head included), for checks against eval_shape."""
        d, layer = self.hidden_size, 2 * self.hidden_size
        qkv = self.attention_bias or self.qkv_bias
        for t, (i, o) in self.target_dims().items():
            bias = {"q_proj": qkv, "k_proj": qkv, "v_proj": qkv, "o_proj": self.attention_bias}.get(t, self.mlp_bias)
            layer += i * o + (o if bias else 0)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_hidden_layers * layer + d + head

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], where: str = "config.json", **overrides) -> "LlamaConfig":
        """From the dict of an HF config.json (transformers 4 `rope_scaling` or 5 `rope_parameters`)."""
        model_type = d.get("model_type", "llama")
        if model_type not in HF_MODEL_TYPES:
            raise ConfigError(f"{where}: model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(HF_MODEL_TYPES)})")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act {act!r} is not supported (Llama uses silu)")
        rope = dict(d.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if d.get("rope_scaling"):
            rope.update(d["rope_scaling"])
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads") if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {missing}")
        window = d.get("sliding_window") if model_type == "mistral" else \
            _qwen2_window(d, where) if model_type == "qwen2" else None
        first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731  (eos may be a list)
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            head_dim=d.get("head_dim"),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=RopeScaling.from_hf_dict(rope, where),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            qkv_bias=model_type == "qwen2",  # Qwen2's q/k/v always carry biases; no config field says so
            sliding_window=None if window is None else int(window),
            bos_token_id=first(d.get("bos_token_id")),
            eos_token_id=first(d.get("eos_token_id")),
            **overrides,
        )

    @classmethod
    def from_hf_json(cls, path: str | pathlib.Path, **overrides) -> "LlamaConfig":
        path = pathlib.Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        return cls.from_hf_dict(d, where=str(path), **overrides)

    @classmethod
    def from_gguf(cls, reader_or_path, **overrides) -> "LlamaConfig":
        """From GGUF metadata (`llama.*` / `qwen2.*` keys) of a gguf.GGUFReader or a file path."""
        import gguf

        reader = gguf_reader(reader_or_path) if not hasattr(reader_or_path, "fields") else reader_or_path
        where = str(getattr(reader, "path", reader_or_path))
        arch = gguf_value(reader, "general.architecture", where)
        if arch not in GGUF_ARCHITECTURES:
            raise ConfigError(f"{where}: general.architecture {arch!r} is not supported "
                              f"(supported: {', '.join(GGUF_ARCHITECTURES)})")

        def get(key, default=None, required=True):
            return gguf_value(reader, f"{arch}.{key}", where, default=... if required else default)

        n_head = int(get("attention.head_count"))
        embed = int(get("embedding_length"))
        n_vocab = get("vocab_size", required=False)
        if n_vocab is None:
            n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        tensor_names = {t.name for t in reader.tensors}
        rope = None
        scaling_type = get("rope.scaling.type", required=False)
        if scaling_type == "linear":
            rope = RopeScaling(rope_type=scaling_type, factor=float(get("rope.scaling.factor")),
                               original_max_position_embeddings=get("rope.scaling.original_context_length", required=False))
        elif scaling_type not in (None, "none"):
            raise ConfigError(f"{where}: {arch}.rope.scaling.type {scaling_type!r} is not supported")
        # llama.cpp stores a Llama-3.x's llama3 rope scaling as per-frequency divisors in this tensor
        freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
        freq_factors = None if freqs is None else tuple(
            float(x) for x in gguf.quants.dequantize(freqs.data, freqs.tensor_type).reshape(-1))
        head_dim = get("attention.key_length", required=False) or get("rope.dimension_count", required=False)
        bos = gguf_value(reader, "tokenizer.ggml.bos_token_id", where, default=None)
        eos = gguf_value(reader, "tokenizer.ggml.eos_token_id", where, default=None)
        return cls(
            vocab_size=int(n_vocab),
            hidden_size=embed,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=n_head,
            num_key_value_heads=int(get("attention.head_count_kv", default=n_head, required=False)),
            head_dim=int(head_dim) if head_dim else None,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            rope_theta=float(get("rope.freq_base", default=10000.0, required=False)),
            rope_scaling=rope,
            rope_freq_factors=freq_factors,
            tie_word_embeddings="output.weight" not in tensor_names,
            max_position_embeddings=int(get("context_length", default=2048, required=False)),
            attention_bias="blk.0.attn_output.bias" in tensor_names,
            qkv_bias="blk.0.attn_q.bias" in tensor_names and "blk.0.attn_output.bias" not in tensor_names,
            mlp_bias="blk.0.ffn_up.bias" in tensor_names,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=None if eos is None else int(eos),
            **overrides,
        )


def _qwen2_window(d: Mapping[str, Any], where: str) -> int | None:
    """Qwen2's window: only with use_sliding_window, and only on the layers layer_types marks (by default
    those from max_window_layers on). A window on some layers but not others is not implemented."""
    if not d.get("use_sliding_window") or d.get("sliding_window") is None:
        return None
    n = int(d["num_hidden_layers"])
    types = d.get("layer_types") or ["sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention"
                                     for i in range(n)]
    windowed = sum(t == "sliding_attention" for t in types)
    if 0 < windowed < n:
        raise ConfigError(f"{where}: a sliding window on {windowed} of {n} layers (use_sliding_window with "
                          f"max_window_layers / layer_types) is not supported; only on all layers or none")
    return int(d["sliding_window"]) if windowed else None


def llama2_7b(**overrides) -> LlamaConfig:
    """Llama-2-7B / Vicuna-7B shape (6.74B parameters)."""
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                       max_position_embeddings=4096, **overrides)


def smollm2_135m(**overrides) -> LlamaConfig:
    """SmolLM2-135M shape (the embedded default LLM)."""
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                       tie_word_embeddings=True, max_position_embeddings=8192, **overrides)


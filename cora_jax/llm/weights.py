"""Weight loading without torch: HF safetensors directories and GGUF files.

Loading is a mechanical name map onto the module tree (HF names mirror ours), tensor by tensor,
straight into the target dtype. Every problem — a missing or unexpected tensor, a shape that
disagrees with the config, a truncated file — stops with a WeightError naming the tensor and file.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm import tqdm

from cora_jax.assets import smollm2_gguf

from .config import LlamaConfig
from .errors import WeightError
from .gguf_file import gguf_reader, gguf_value
from .model import Llama
from .tokenizer import Tokenizer


# ------------------------------------------------------------------------------- name maps
_GGUF_LAYER = {  # GGUF blk.{i}.X -> HF model.layers.{i}.Y
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
# Non-parameter buffers some HF checkpoints carry; they are recomputed, so they are skipped.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


class _Slot:
    """Destination of HF tensors: a model parameter, and for stacked ones the layer index."""

    def __init__(self, var: nnx.Variable, path: str, layer: int | None, transpose: bool):
        self.var, self.path, self.layer, self.transpose = var, path, layer, transpose


def _slots(model: Llama) -> dict[str, _Slot]:
    """HF tensor name -> slot, for every parameter of the model."""
    cfg = model.config
    params = {".".join(str(p) for p in path): var for path, var in nnx.iter_graph(model)
              if isinstance(var, nnx.Param)}
    slots: dict[str, _Slot] = {}
    for path, var in params.items():
        parts = path.split(".")
        if path == "model.embed_tokens.embedding":
            slots["model.embed_tokens.weight"] = _Slot(var, path, None, False)
        elif path == "model.norm.weight":
            slots["model.norm.weight"] = _Slot(var, path, None, False)
        elif path == "lm_head.kernel":
            slots["lm_head.weight"] = _Slot(var, path, None, True)
        elif parts[:2] == ["model", "layers"]:
            hf_suffix = ".".join(parts[2:]).replace(".kernel", ".weight")
            for i in range(cfg.num_hidden_layers):
                slots[f"model.layers.{i}.{hf_suffix}"] = _Slot(var, path, i, parts[-1] == "kernel")
        else:
            raise AssertionError(f"parameter {path} has no HF name")  # model and map out of sync
    return slots


# Sharding of a parameter, from its (abstract) Variable: logical `axes` metadata and shape.
ShardingOf = Callable[[nnx.Variable], jax.sharding.Sharding]


def _to_device(buf: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """A host array on the default device, or straight into `sharding`: each device (of this process)
    receives only its own slice, so no device ever holds the whole weight."""
    if sharding is None:
        return jnp.asarray(buf)
    return jax.make_array_from_callback(buf.shape, sharding, lambda index: buf[index])


def _fill(model: Llama, tensors: Iterator[tuple[str, str, Callable[[], np.ndarray], tuple[int, ...]]],
          total: int, optional: set[str] = frozenset(), progress: bool = True, sharding_of: ShardingOf | None = None) -> None:
    """Copy (name, file, load, shape) tensors into the model's parameters, checking names and shapes;
    with `sharding_of`, each parameter is placed in its sharding."""
    slots = _slots(model)
    buffers: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    for name, file, load, shape in tqdm(tensors, total=total, desc="loading weights", leave=False,
                                        disable=not progress or total < 64):
        if _IGNORED.fullmatch(name):
            continue
        slot = slots.get(name)
        if slot is None:
            if name in optional:
                continue
            raise WeightError(f"{file}: unexpected tensor {name!r} (not a parameter of this Llama config)")
        target = tuple(slot.var.shape)
        want = target[1:] if slot.layer is not None else target
        if slot.transpose:
            want = want[::-1]
        if tuple(shape) != tuple(want):
            raise WeightError(f"{file}: tensor {name!r} has shape {tuple(shape)}, the config expects {tuple(want)}")
        if name in seen:
            raise WeightError(f"{file}: tensor {name!r} appears twice (also in {seen[name]})")
        seen[name] = file
        value = load()
        if slot.transpose:
            value = value.T
        dtype = slot.var.dtype
        if slot.layer is None:
            buffers[slot.path] = np.asarray(value, dtype=dtype)
        else:
            buf = buffers.get(slot.path)
            if buf is None:
                buf = buffers[slot.path] = np.empty(target, dtype=dtype)
            buf[slot.layer] = value
    missing = sorted(set(slots) - set(seen))
    if missing:
        files = sorted(set(seen.values())) or ["(no file)"]
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightError(f"{', '.join(files)}: missing tensor(s) {missing[:5]}{more}: the weights do not match "
                          f"the config; download or convert the model again")
    vars_by_path = {s.path: s.var for s in slots.values()}
    for path, buf in buffers.items():
        var = vars_by_path[path]
        var.set_value(_to_device(buf, None if sharding_of is None else sharding_of(var)))


def _empty_model(cfg: LlamaConfig) -> Llama:
    """Model with abstract parameters (no random init of billions of weights); values are filled next."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


# ------------------------------------------------------------------------------ safetensors
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _safetensors_tensors(path: pathlib.Path):
    """(name, file, loader, shape) of every tensor of one .safetensors file.

    The format is an 8-byte header length, a JSON header, then raw little-endian data. It is read
    here with numpy memmaps (safetensors' own numpy reader has no bfloat16), one tensor at a time.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightError(f"{path}: truncated safetensors file (no header): download or convert the model again")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise WeightError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size}): "
                              f"download or convert the model again")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise WeightError(f"{path}: corrupt safetensors header ({e.msg}): download or convert the model again") from e
    header.pop("__metadata__", None)
    base = 8 + n
    out = []
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if base + end > size:
            raise WeightError(f"{path}: tensor {name!r} is truncated (needs bytes up to {base + end}, file has {size}): "
                              f"download or convert the model again")
        if end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise WeightError(f"{path}: tensor {name!r} byte range disagrees with its shape {shape}")

        def load(start=start, shape=shape, dtype=dtype):
            return np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)

        out.append((name, str(path), load, shape))
    return out


def _hf_files(root: pathlib.Path) -> list[pathlib.Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise WeightError(f"{index}: no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (root / name).is_file():
                raise WeightError(f"{index}: shard {name} is missing from {root}")
        return [root / name for name in files]
    single = sorted(root.glob("*.safetensors"))
    if single:
        return single
    if list(root.glob("*.bin")) or list(root.glob("*.pt")) or list(root.glob("*.pth")):
        raise WeightError(
            f"{root}: holds only pickled PyTorch weights (.bin/.pt), which are not loaded (unsafe, needs torch): "
            f"convert them once with: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{root}').save_pretrained('{root}-safetensors', safe_serialization=True)\"")
    raise WeightError(f"{root}: no model.safetensors, *.safetensors or model.safetensors.index.json: "
                      f"give an HF model folder (config.json + safetensors) or a .gguf file")


def load_hf_dir(root, *, config_overrides: dict | None = None, progress: bool = True,
                sharding_of: ShardingOf | None = None) -> Llama:
    root = pathlib.Path(root)
    files = _hf_files(root)  # first: a folder of pickled weights has a better message than its missing config.json
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise WeightError(f"{root}: no config.json: copy the model's config.json beside its weights")
    cfg = LlamaConfig.from_hf_json(cfg_path, **(config_overrides or {}))
    model = _empty_model(cfg)
    tensors = [t for f in files for t in _safetensors_tensors(f)]
    # a tied model may still carry a copy of the head; it is the embedding and is not needed
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    _fill(model, iter(tensors), len(tensors), optional, progress, sharding_of)
    return model


# --------------------------------------------------------------------------------------- GGUF
def _unpermute(w_oi: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf `permute`): per head, the rows
    were reordered from HF's [first half | second half] rotary layout into interleaved pairs."""
    out = w_oi.shape[0]
    return w_oi.reshape(n_head, out // n_head // 2, 2, *w_oi.shape[1:]).swapaxes(1, 2).reshape(w_oi.shape)


def _gguf_tensors(reader, cfg: LlamaConfig, path: pathlib.Path, unpermute: bool):
    """unpermute: undo llama.cpp's q/k row permutation (arch llama; qwen2 keeps HF's rotary layout)."""
    import gguf

    size = os.path.getsize(path)
    out = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # read into the config (rope_freq_factors)
            continue
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", t.name)
        if m and m.group(2) in _GGUF_LAYER:
            hf = f"model.layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.{m.group(3)}"
        elif t.name in _GGUF_TOP:
            hf = _GGUF_TOP[t.name]
        else:
            raise WeightError(f"{path}: unexpected tensor {t.name!r} (not part of a plain Llama or Qwen2 model)")
        shape = tuple(int(s) for s in reversed(t.shape))  # GGML lists ne0 (the row length) first
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise WeightError(f"{path}: tensor {t.name!r} is truncated")
        heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
        n_heads = heads.get(m.group(2)) if m and unpermute else None

        def load(t=t, shape=shape, n_heads=n_heads):
            try:
                w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            except NotImplementedError as e:
                raise WeightError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which gguf cannot dequantise") from e
            return _unpermute(w, n_heads) if n_heads else w

        out.append((hf, f"{path} ({t.name})", load, shape))
    return out


def load_gguf(path, *, config_overrides: dict | None = None, progress: bool = True,
              sharding_of: ShardingOf | None = None) -> Llama:
    path = pathlib.Path(path)
    reader = gguf_reader(path)
    cfg = LlamaConfig.from_gguf(reader, **(config_overrides or {}))
    model = _empty_model(cfg)
    unpermute = gguf_value(reader, "general.architecture", str(path)) == "llama"
    tensors = _gguf_tensors(reader, cfg, path, unpermute)
    _fill(model, iter(tensors), len(tensors), progress=progress, sharding_of=sharding_of)
    return model


# ------------------------------------------------------------------------------------ entry
def load_weights(path, *, config_overrides: dict | None = None, progress: bool = True,
                 sharding_of: ShardingOf | None = None) -> Llama:
    """Model from an HF directory (config.json + safetensors) or a .gguf file; `progress`: a tqdm bar;
    `sharding_of`: where each parameter goes (default: whole, on the default device)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        return load_hf_dir(path, config_overrides=config_overrides, progress=progress, sharding_of=sharding_of)
    if path.suffix == ".gguf":
        return load_gguf(path, config_overrides=config_overrides, progress=progress, sharding_of=sharding_of)
    if path.suffix in (".bin", ".pt", ".pth"):
        raise WeightError(f"{path}: pickled PyTorch weights are not loaded; convert the model directory to "
                          "safetensors with transformers' save_pretrained(safe_serialization=True)")
    raise WeightError(f"{path}: expected an HF model directory or a .gguf file")


def load_llm(path: str | os.PathLike | None = None, *, dtype=jnp.float32, compute_dtype=None, remat: str = "none",
             progress: bool = True, sharding_of: ShardingOf | None = None):
    """(Llama, Tokenizer) from an HF directory, a .gguf file, or (None) the embedded SmolLM2-135M.

    dtype: parameter storage dtype; compute_dtype: activations (default: dtype);
    sharding_of: each parameter's sharding (cora_jax.train.mesh.param_sharding_of(mesh)); default:
    whole, on the default device.
    """
    path = smollm2_gguf() if path is None else pathlib.Path(path).expanduser()
    overrides = dict(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(compute_dtype or dtype).name, remat=remat)
    model = load_weights(path, config_overrides=overrides, progress=progress, sharding_of=sharding_of)
    return model, Tokenizer.from_path(path)


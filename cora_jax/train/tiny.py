"""Tiny, fast stand-ins of the *inputs* (not of any module) for tests and smoke runs: a row subset
of a real dataset written as a split folder, and a random Llama saved as an HF directory
(config.json + safetensors + a BPE tokenizer trained on the prompts), which cora_jax.llm loads
through its ordinary HF path. numpy + safetensors + tokenizers only: no torch needed.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np


def tiny_dataset(out: str | pathlib.Path, rows: dict[str, int] | None = None, source: str | pathlib.Path = "ml100k") -> pathlib.Path:
    """Write the first N rows of each split of `source` (a split folder or "ml100k") into `out`."""
    from cora_jax.data import Dataset, load_dataset, resolve_data_arg, write_dataset

    rows = rows or {"train": 96, "valid": 48, "valid_small": 32, "test": 48}
    ds = load_dataset(resolve_data_arg(source))
    splits = {name: ds.splits[name].take(np.arange(min(n, len(ds.splits[name]))))
              for name, n in rows.items() if name != "valid_small"}
    # valid_small must be a subset of valid: its first rows
    splits["valid_small"] = splits["valid"].take(np.arange(min(rows["valid_small"], len(splits["valid"]))), name="valid_small")
    # not_cold must describe the subset's own train split
    users, items = set(splits["train"].uid.tolist()), set(splits["train"].iid.tolist())
    for name in ("valid", "valid_small", "test"):
        sp = splits[name]
        warm = np.array([u in users and i in items for u, i in zip(sp.uid, sp.iid)], np.int32)
        splits[name] = dataclasses.replace(sp, not_cold=warm)
    small = Dataset(root=None, splits=splits, user_num=ds.user_num, item_num=ds.item_num,
                    item_titles=ds.item_titles, domain=ds.domain)
    return write_dataset(small, out)


def tiny_llm_dir(out: str | pathlib.Path, texts: list[str], *, hidden: int = 32, layers: int = 2, heads: int = 4,
                 kv_heads: int = 2, ffn: int = 48, vocab_size: int = 400, seed: int = 0) -> pathlib.Path:
    """A random Llama (HF names, float32 safetensors) + a byte-level BPE tokenizer trained on `texts`."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The answers too, so that " Yes" / " No" are tokens of their own as in real vocabularies.
    tok.train_from_iterator([*texts, *[" Yes", " No"] * 4096], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>").save_pretrained(out)
    vocab = tok.get_vocab_size()

    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    w = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": 1 + w(hidden),
               "lm_head.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": w(ffn, hidden), p + "mlp.up_proj.weight": w(ffn, hidden),
            p + "mlp.down_proj.weight": w(hidden, ffn),
            p + "input_layernorm.weight": 1 + w(hidden), p + "post_attention_layernorm.weight": 1 + w(hidden),
        })
    save_file(tensors, str(out / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 1024, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out

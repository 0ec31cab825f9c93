"""Llama-family backbones against transformers: Llama-3.x (llama3 RoPE), Qwen2 / Qwen2.5 (q/k/v biases,
tied or untied, its own RoPE base) and Mistral (sliding window). Each is a tiny random model saved as an HF
folder with a tokenizer of its family's style (byte-level BPE with Llama-3's or Qwen2's split, or
sentencepiece-style BPE), loaded with load_llm and run on left-padded prompts: full logits, the answer token
and the score path. Also GGUF llama (Llama-3's rope_freqs) and qwen2 files, and unsupported architectures."""
import json
import math
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.errors import one_line
from cora_jax.llm import ConfigError, Llama, LlamaConfig, load_llm, load_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TITLES = ["Toy Story (1995)", "Heat (1995)", "Sting, The (1973)", "Fargo (1996)", "Casino (1995)",
          "Babe (1995)", "Twister (1996)", "Braveheart (1995)"]


def _prompt(history, title):
    return ("#Question: A user has given high ratings to the following movies: " + ", ".join(f'"{t}"' for t in history)
            + f'. Leverage the information to predict whether the user would enjoy the movie titled "{title}"? '
            + 'Answer with "Yes" or "No". \\n#Answer:')


PROMPTS = [_prompt(TITLES[:1], TITLES[7]), _prompt(TITLES[1:5], TITLES[0]), _prompt(TITLES[3:5], TITLES[6])]
CORPUS = ([_prompt(TITLES[i:i + k], TITLES[(i + 3 * k) % 8]) + (" Yes" if (i + k) % 2 else " No")
           for i in range(8) for k in range(1, 4)] + ["#Answer:\nYes", "#Answer:\nNo", "Yes, no."] * 4)

# Pre-tokenizer splits from the models' tokenizer.json files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-6, max_position_embeddings=128, initializer_range=0.15)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # head_dim 8: all three bands
QWEN2_ROPE = {"rope_type": "default", "rope_theta": 1e6}
FAMILIES = {  # name: (transformers classes, config, tokenizer style, the answer token)
    "llama3": ("Llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True), "llama3", "ĠYes"),
    "qwen2_tied": ("Qwen2", dict(rope_parameters=QWEN2_ROPE, tie_word_embeddings=True), "qwen2", "ĠYes"),
    "qwen2_untied": ("Qwen2", dict(rope_parameters=QWEN2_ROPE, tie_word_embeddings=False), "qwen2", "ĠYes"),
    "mistral": ("Mistral", dict(sliding_window=16, tie_word_embeddings=False), "sentencepiece", "▁Yes"),
}
SPECIALS = {"llama3": ("<|begin_of_text|>", "<|end_of_text|>", None), "qwen2": (None, "<|endoftext|>", "<|endoftext|>"),
            "sentencepiece": ("<s>", "</s>", None)}  # bos, eos, pad


def _tokenizer(style):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    bos, eos, pad = SPECIALS[style]
    specials = [t for t in dict.fromkeys((bos, eos, pad)) if t]
    if style == "sentencepiece":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    else:
        split = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def _save_family(out, name, seed=0):
    """A tiny random transformers model of the family (random norms and biases) and its tokenizer in `out`."""
    kind, kw, style, _ = FAMILIES[name]
    hf_tok = _tokenizer(style)
    cfg = getattr(transformers, f"{kind}Config")(vocab_size=len(hf_tok), **SIZES, **kw)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{kind}ForCausalLM")(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return model, out


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = _save_family(tmp_path_factory.mktemp(name), name)
        return built[name]

    return get


def _reference(ref, ids, mask):
    """transformers' logits for left-padded rows, each at the positions it has alone (ours count real tokens)."""
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        return ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()


def _check_parity(ref, model, tok, label):
    """Full logits at every real position within 1e-4, and the score path at each row's last one."""
    ids, mask = tok.batch(PROMPTS)
    assert len(set(mask.sum(1))) == len(PROMPTS) and mask[:, 0].min() == 0  # left padding, rows of unequal length
    want = _reference(ref, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    err = float(np.abs(got - want)[mask.astype(bool)].max())
    answers = [tok.answer_token_id("Yes"), tok.answer_token_id("No")]
    score = np.asarray(model.score(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(answers)))
    score_err = float(np.abs(score - want[:, -1, answers]).max())
    print(f"{label}: max |logit diff| {err:.2e}, score {score_err:.2e} (logits up to {np.abs(want).max():.1f})")
    assert err <= 1e-4 and score_err <= 1e-4
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_hf_family_matches_transformers_on_left_padded_prompts(family, name):
    ref, path = family(name)
    model, tok = load_llm(path)
    cfg = model.config
    assert cfg.tie_word_embeddings == ref.config.tie_word_embeddings
    assert cfg.qkv_bias == name.startswith("qwen2") and not cfg.attention_bias
    assert cfg.sliding_window == (16 if name == "mistral" else None)
    ids, mask = _check_parity(ref, model, tok, name)
    if name == "mistral":
        assert mask.sum(1).max() > 2 * cfg.sliding_window  # the window really cuts the prompts


@pytest.mark.parametrize("name", list(FAMILIES))
def test_answer_token_is_the_spaced_yes_of_the_models_own_tokenizer(family, name):
    _, path = family(name)
    _, tok = load_llm(path)
    vocab = transformers.AutoTokenizer.from_pretrained(path).get_vocab()
    want = FAMILIES[name][3]
    assert tok.answer_token_id("Yes") == vocab[want]
    assert tok.answer_token_id("No") == vocab[want.replace("Yes", "No")]
    assert tok.answer_token_id("Yes", prompt=PROMPTS[1]) == vocab[want]  # the real prompt's ending: the same token
    if FAMILIES[name][2] != "sentencepiece":
        # byte-level BPE: "Yes" alone is another token; after a newline the answer has no space
        assert vocab["Yes"] != vocab[want] and tok.encode("Yes")[-1] == vocab["Yes"]
        assert tok.answer_token_id("Yes", prompt="#Answer:\n") == vocab["Yes"]
    assert tok.bos_id == (None if name.startswith("qwen2") else vocab[SPECIALS[FAMILIES[name][2]][0]])


@pytest.mark.slow
def test_mistral_sliding_window_boundary(tmp_path):
    """A 16-token window over 37 (and, left padded, 30) tokens, as transformers applies it; a model without
    the window, or with one token more, is measurably wrong past the window."""
    torch.manual_seed(1)
    cfg = transformers.MistralConfig(vocab_size=97, sliding_window=16, **SIZES)
    ref = transformers.MistralForCausalLM(cfg).float().eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, (2, 37))
    mask = np.ones_like(ids)
    mask[1, :7] = 0
    want = _reference(ref, ids, mask)
    real = mask.astype(bool)
    loaded = load_weights(tmp_path)
    assert loaded.config.sliding_window == 16

    def err(window):
        model = Llama(loaded.config.replace(sliding_window=window))
        nnx.update(model, nnx.state(loaded, nnx.Param))
        return float(np.abs(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))) - want)[real].max())

    exact, none, wider = err(16), err(None), err(17)
    print(f"mistral window 16, 37 tokens: max |logit diff| {exact:.2e}; without the window {none:.2f}, window 17 {wider:.3f}")
    assert exact <= 1e-4 and none > 0.1 and wider > 1e-3


# ---------------------------------------------------------------------------------------------- GGUF
_GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def _llamacpp_permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute (q/k rows into llama.cpp's interleaved rotary pairs)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llamacpp_rope_freqs(rope, head_dim):
    # convert_hf_to_gguf.py's LlamaModel rope_freqs for rope_type llama3: a divisor per frequency
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    old, low, high, factor = (rope[k] for k in ("original_max_position_embeddings", "low_freq_factor",
                                                "high_freq_factor", "factor"))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def _write_gguf(ref, tok_dir, path, arch, pre, style):
    """An F32 GGUF of a transformers model and its byte-level BPE tokenizer, laid out as llama.cpp's converter
    writes it: q/k rows permuted for arch llama only, llama3 scaling as rope_freqs, no output.weight when tied,
    and for qwen2 config.json's bos_token_id (<|endoftext|>) although the tokenizer prepends none."""
    import gguf

    cfg = ref.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    bos, eos, _ = SPECIALS[style]
    w.add_bos_token_id(vocab[bos or eos])
    w.add_eos_token_id(vocab[eos])
    heads = {"self_attn.q_proj": cfg.num_attention_heads, "self_attn.k_proj": cfg.num_key_value_heads}
    for name, t in ref.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        arr = t.numpy().astype(np.float32)
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            if arch == "llama" and m.group(2) in heads:
                arr = _llamacpp_permute(arr, heads[m.group(2)])
            name = f"blk.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.{m.group(3)}"
        else:
            name = _GGUF_TOP[name]
        w.add_tensor(name, np.ascontiguousarray(arr))
    if cfg.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _llamacpp_rope_freqs(cfg.rope_parameters, cfg.head_dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,pre", [("llama3", "llama", "llama-bpe"), ("qwen2_tied", "qwen2", "qwen2"),
                                           ("qwen2_untied", "qwen2", "qwen2")])
def test_gguf_family_matches_transformers(family, tmp_path, name, arch, pre):
    ref, path = family(name)
    _write_gguf(ref, path, tmp_path / f"{name}.gguf", arch, pre, FAMILIES[name][2])
    model, tok = load_llm(tmp_path / f"{name}.gguf")
    _, hf_tok = load_llm(path)
    cfg = model.config
    assert (cfg.qkv_bias, cfg.attention_bias, cfg.tie_word_embeddings, cfg.rope_theta) == \
        (arch == "qwen2", False, ref.config.tie_word_embeddings, ref.config.rope_parameters["rope_theta"])
    assert (cfg.rope_freq_factors is not None) == (name == "llama3")
    assert tok.encode_many(PROMPTS) == hf_tok.encode_many(PROMPTS) and tok.bos_id == hf_tok.bos_id
    assert tok.answer_token_id("Yes") == hf_tok.answer_token_id("Yes")
    _check_parity(ref, model, tok, f"{name} GGUF ({arch})")


# ------------------------------------------------------------------------------------------ refusals
def test_unsupported_architectures_stop_with_one_line_naming_them(tmp_path):
    import gguf
    from safetensors.numpy import save_file

    folder = tmp_path / "gemma"
    folder.mkdir()
    save_file({"model.norm.weight": np.ones(8, np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(model_type="gemma2", vocab_size=10, hidden_size=8,
                                                        intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)))
    with pytest.raises(ConfigError, match=r"model_type 'gemma2' is not supported \(supported: llama, mistral, qwen2\)") as e:
        load_llm(folder)
    assert "\n" not in one_line(e.value)

    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match=r"general.architecture 'phi3' is not supported \(supported: llama, qwen2\)") as e:
        load_llm(tmp_path / "phi.gguf")
    assert "\n" not in one_line(e.value)


def test_qwen2_sliding_window_config():
    d = dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=4,
             num_attention_heads=2, sliding_window=32, max_window_layers=2)
    assert LlamaConfig.from_hf_dict(d).sliding_window is None  # Qwen2.5's configs: a window size, switched off
    assert LlamaConfig.from_hf_dict(dict(d, use_sliding_window=True, max_window_layers=0)).sliding_window == 32
    with pytest.raises(ConfigError, match="2 of 4 layers"):
        LlamaConfig.from_hf_dict(dict(d, use_sliding_window=True))
    mistral = dict(d, model_type="mistral")
    assert LlamaConfig.from_hf_dict(mistral).sliding_window == 32
    assert LlamaConfig.from_hf_dict(dict(mistral, sliding_window=None)).sliding_window is None

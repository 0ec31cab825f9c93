"""Weight loading: HF safetensors dirs vs transformers (tiny random Llamas), GGUF (q/k permutation,
round trip, quantised types), the embedded SmolLM2 vs transformers' GGUF path, tokenizers, errors."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.llm import LlamaConfig, Tokenizer, WeightError, length_buckets, load_llm, load_weights
from cora_jax.llm.weights import _unpermute
from llm_helpers import ml1m_test_prompts, tiny_model

# ------------------------------------------------------------------ tiny HF models vs transformers
HF_CASES = {
    "mha_tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa_untied_llama3": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "mqa_untied_linear": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                              rope_scaling={"rope_type": "linear", "factor": 3.0}, attention_bias=True),
    "gqa_tied_dynamic_sharded": dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                                     max_position_embeddings=12, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


def _save_tiny_hf(tmp_path, name, seed=0):
    torch = pytest.importorskip("torch")
    import transformers

    kw = dict(HF_CASES[name])
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                                   rms_norm_eps=1e-6, rope_theta=500.0, max_position_embeddings=kw.pop("max_position_embeddings", 64),
                                   **kw)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # random norms so the norm weights are really checked
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    out = tmp_path / name
    model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB" if "sharded" in name else "5GB")
    return model, out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HF_CASES))
def test_tiny_hf_llama_logits_match_transformers(tmp_path, name):
    torch = pytest.importorskip("torch")
    ref, path = _save_tiny_hf(tmp_path, name)
    if "sharded" in name:
        assert (path / "model.safetensors.index.json").is_file()
    ours = load_weights(path)
    ids = np.random.default_rng(0).integers(0, 97, (2, 20))  # 20 > 12: dynamic RoPE really grows its base
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), None))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_hf_loader_errors_name_tensor_and_file(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file

    _, path = _save_tiny_hf(tmp_path, "mha_tied")
    f = path / "model.safetensors"
    tensors = load_file(f)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((path / "config.json").read_text())

    def expect(tensors, pattern):
        save_file(tensors, bad / "model.safetensors")
        with pytest.raises(WeightError, match=pattern):
            load_weights(bad)

    name = "model.layers.1.mlp.up_proj.weight"
    expect({k: v for k, v in tensors.items() if k != name}, f"missing.*{name}")
    expect(dict(tensors, **{"model.layers.7.extra.weight": tensors[name]}), "unexpected tensor 'model.layers.7.extra.weight'")
    expect(dict(tensors, **{name: tensors[name][:, :-1]}), rf"model.safetensors: tensor '{name}' has shape")
    data = f.read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(WeightError, match="truncated"):
        load_weights(bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightError, match="save_pretrained"):
        load_weights(bad)


def test_loading_bar_follows_progress_flag(tmp_path, capfd):
    from cora_jax.train.tiny import tiny_llm_dir

    path = tiny_llm_dir(tmp_path / "m", ["a tiny corpus"] * 4, layers=8)  # 8 x 9 + 3 tensors: above the bar's floor
    load_weights(path, progress=False)
    assert "loading weights" not in capfd.readouterr().err
    load_weights(path, progress=True)
    assert "loading weights" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------- GGUF
def _llamacpp_permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute, the reference we must invert
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llamacpp_permute():
    w = np.arange(12 * 8 * 5, dtype=np.float32).reshape(96, 5)
    for heads in (1, 3, 12 // 2):
        if 96 % (2 * heads) == 0:
            assert np.array_equal(_unpermute(_llamacpp_permute(w, heads), heads), w)
            assert not np.array_equal(_llamacpp_permute(w, heads), w)


def _write_gguf(model, path, qtype_name="F32"):
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab_size)
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    L = model.model.layers

    def add(name, arr, quant=True):
        arr = np.ascontiguousarray(arr, np.float32)
        if quant and qtype_name != "F32" and arr.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_shape=gguf.quant_shape_to_byte_shape(arr.shape, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)

    add("token_embd.weight", np.asarray(model.model.embed_tokens.embedding[...]))
    add("output_norm.weight", np.asarray(model.model.norm.weight[...]))
    for i in range(cfg.num_hidden_layers):
        add(f"blk.{i}.attn_norm.weight", np.asarray(L.input_layernorm.weight[i]))
        add(f"blk.{i}.ffn_norm.weight", np.asarray(L.post_attention_layernorm.weight[i]))
        for t, g in names.items():
            sub = L.self_attn if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else L.mlp
            w_oi = np.asarray(getattr(sub, t).kernel[i]).T
            if t == "q_proj":
                w_oi = _llamacpp_permute(w_oi, cfg.num_attention_heads)
            if t == "k_proj":
                w_oi = _llamacpp_permute(w_oi, cfg.num_key_value_heads)
            add(f"blk.{i}.{g}.weight", w_oi)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gguf_round_trip(tmp_path, qtype):
    # widths are multiples of 32 so Q8_0 blocks fit
    model = tiny_model(vocab_size=64, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    _write_gguf(model, tmp_path / "m.gguf", qtype)
    loaded = load_weights(tmp_path / "m.gguf")
    assert loaded.config.num_key_value_heads == 2 and loaded.config.tie_word_embeddings
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)))
    want, got = np.asarray(model(ids, None)), np.asarray(loaded(ids, None))
    np.testing.assert_allclose(got, want, atol=1e-5 if qtype == "F32" else 0.05, rtol=0)
    if qtype == "F32":
        (tmp_path / "cut.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:-300])
        with pytest.raises(WeightError, match="cut.gguf"):
            load_weights(tmp_path / "cut.gguf")


# ------------------------------------------------------------------- embedded SmolLM2 (real model)
@pytest.fixture(scope="module")
def smollm2():
    return load_llm(None)


@pytest.mark.slow
def test_smollm2_tokenizer_answer_and_batch(smollm2):
    _, tok = smollm2
    assert tok.answer_token_id("Yes") == 9230 and tok.answer_token_id("No") == 2838
    ids = tok.encode('movie titled "Sting, The (1973)"? \\n#Answer:')
    assert ids[0] == tok.bos_id == 1
    x, m = tok.batch(["a b c d e f g h i j", "a"], pad_multiple=4)
    assert x.shape == m.shape and x.shape[1] % 4 == 0 and m[1, -1] == 1 and m[1, 0] == 0 and m[0].sum() == len(tok.encode("a b c d e f g h i j"))
    buckets = length_buckets([5, 1, 9, 2, 7], 2)
    assert [list(b) for b in buckets] == [[1, 3], [0, 4], [2]]


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf(smollm2, ml1m_dir):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    import transformers

    model, tok = smollm2
    from cora_jax.assets import smollm2_gguf

    gguf_path = smollm2_gguf()
    kw = dict(gguf_file=gguf_path.name)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    prompts = ml1m_test_prompts(ml1m_dir)
    assert len(prompts) == 7331
    ours = tok.encode_many(prompts)
    theirs = hf_tok(prompts, add_special_tokens=False)["input_ids"]
    diff = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a[1:] != b]
    assert not diff, f"{len(diff)} prompts tokenise differently, first: {prompts[diff[0]]!r}"

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw).eval()
    sample = prompts[:: len(prompts) // 16][:16]
    ids, mask = tok.batch(sample)
    vocab = jnp.arange(model.config.vocab_size)
    got = np.asarray(nnx.jit(lambda m, x, k: m.score(x, k, vocab))(model, jnp.asarray(ids), jnp.asarray(mask)))
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # left padding with the positions each prompt has alone
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(pos, dtype=torch.long), logits_to_keep=1).logits[:, -1].numpy()
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-3, f"max |logit diff| {err}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.slow
def test_config_from_gguf_metadata(smollm2):
    cfg = smollm2[0].config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta, cfg.tie_word_embeddings) == \
        (30, 576, 9, 3, 1536, 49152, 100000.0, True)
    assert isinstance(cfg, LlamaConfig) and json.dumps(cfg.num_params())
    assert isinstance(smollm2[1], Tokenizer)
    assert pathlib.Path(smollm2[1].source).suffix == ".gguf"

"""The LLM baselines: CoLLM's prompt and its slots, input embeddings at placeholder tokens (one
forward path), LoRA equivalences, frozen stage-1 LoRA, and every method trained and scored end to end."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.baselines import BinaryCodeConfig, LoRAConfig, MethodConfig, TALLRec
from cora_jax.batch import Batch
from cora_jax.cora import TRAINABLE
from cora_jax.data import ITEM_SLOT, USER_SLOT, PromptConfig, render_prompt, split_prompts
from cora_jax.llm import Tokenizer, load_llm
from cora_jax.train import TrainConfig, train
from cora_jax.train.evaluate import evaluate_run
from cora_jax.train.batches import make_batch, prepare_split
from cora_jax.train.setup import SetupError, load_setup

TAIL = 'Answer with "Yes" or "No". \\n#Answer:'


def test_collm_template_word_for_word_and_id_only():
    cfg = PromptConfig(template="collm")
    got = render_prompt(["Heat (1995)", "Up (2009)"], "Alien (1979)", cfg)
    assert got == ('#Question: A user has given high ratings to the following movies: "Heat (1995)", "Up (2009)". '
                   "Additionally, we have information about the user's preferences encoded in the feature <UserID>. "
                   "Using all available information, make a prediction about whether the user would enjoy the movie "
                   'titled "Alien (1979)" with the feature <TargetItemID>? ' + TAIL)
    assert render_prompt(["Heat (1995)"], "Alien (1979)", cfg, "0110", "1.2.3.4").count("feature 0110.") == 1
    id_only = render_prompt(["Heat (1995)"], "Alien (1979)", dataclasses.replace(cfg, with_titles=False))
    assert "Heat" not in id_only and "Alien" not in id_only and USER_SLOT in id_only and ITEM_SLOT in id_only
    plain = render_prompt(["Heat (1995)"], "Alien (1979)", PromptConfig(with_titles=False))
    assert plain == "#Question: Predict whether the user would enjoy the movie? " + TAIL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_world):
    return tmp_path_factory.mktemp("baselines"), tiny_world("cora", "collm").base


def test_slot_tokens_replace_markers_and_keep_the_text_tokens(tiny):
    root, base = tiny
    tok = Tokenizer.from_path(base.llm)
    text = render_prompt(["Heat (1995)"], "Alien (1979)", PromptConfig(template="collm"))
    (ids,), (slots,) = tok.encode_with_slots([text], (USER_SLOT, ITEM_SLOT), 3)
    assert [s for s in slots if s] == [1, 2, 3, 4, 5, 6] and all(ids[i] == tok.pad_id for i, s in enumerate(slots) if s)
    # the text between the slots is tokenised exactly as on its own
    first, rest = text.split(" " + USER_SLOT)
    middle, last = rest.split(" " + ITEM_SLOT)
    want = tok.encode(first) + [tok.pad_id] * 3 + tok.encode_many([middle])[0][1:] + [tok.pad_id] * 3 \
        + tok.encode_many([last])[0][1:]
    assert ids == want


def test_slot_embeddings_use_the_ordinary_forward(tiny):
    """Putting a token's own embedding at a slot gives exactly the forward of that token id."""
    root, base = tiny
    llm, _ = load_llm(base.llm)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, llm.config.vocab_size, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.r_[[[0] * 3 + [1] * 9], [[1] * 12]], jnp.int32)
    slots = jnp.zeros_like(ids).at[:, 5].set(1).at[:, 8].set(2)
    table = llm.model.embed_tokens.embedding[...]
    vectors = jnp.stack([table[ids[:, 5]], table[ids[:, 8]]], axis=1)
    placeholder_ids = ids.at[:, 5].set(0).at[:, 8].set(0)
    embeds = llm.embed_slots(placeholder_ids, slots, vectors)
    answer = jnp.asarray([3, 7])
    np.testing.assert_array_equal(llm.score(None, mask, answer, input_embeds=embeds), llm.score(ids, mask, answer))
    other = llm.score(None, mask, answer, input_embeds=llm.embed_slots(placeholder_ids, slots, vectors + 1.0))
    assert np.abs(np.asarray(other) - np.asarray(llm.score(ids, mask, answer))).max() > 1e-3


def test_fresh_lora_is_the_base_model_and_its_factors_are_trainable(tiny):
    root, base = tiny
    llm, tok = load_llm(base.llm)
    model = TALLRec(MethodConfig(kind="tallrec", lora=LoRAConfig(dropout=0.0)), llm, 5, rngs=nnx.Rngs(params=0))
    ids = jnp.asarray(np.random.default_rng(1).integers(2, llm.config.vocab_size, (3, 10)), jnp.int32)
    b = Batch(ids, jnp.ones_like(ids))
    np.testing.assert_array_equal(model.batch_scores(b), llm.score(ids, b.mask, jnp.asarray([5]))[:, 0])
    trainable = nnx.state(model, TRAINABLE)
    names = {jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(trainable))[0]}
    assert names == {"lora/a/q_proj", "lora/a/v_proj", "lora/b/q_proj", "lora/b/v_proj", "loss_offset"}
    # a non-zero B changes the score: the LoRA really is in the forward
    model.lora.b["v_proj"][...] = jnp.ones_like(model.lora.b["v_proj"][...])
    assert np.abs(np.asarray(model.batch_scores(b) - llm.score(ids, b.mask, jnp.asarray([5]))[:, 0])).max() > 1e-3


def _train(root, base, name, **method):
    summary = train(dataclasses.replace(base, method=MethodConfig(**method), out=str(root / name)))
    assert summary["steps"] == 3 and json.loads((root / name / "config.json").read_text())["method"]["kind"] == method["kind"]


def _lora(run_dir):
    from cora_jax.train.models import load_frozen_lora
    from cora_jax.train.setup import load_run_config
    cfg = load_run_config(run_dir)
    return load_frozen_lora(dataclasses.replace(cfg.method, kind="collm", lora_from=str(run_dir)), load_setup(cfg))


@pytest.mark.slow
def test_every_baseline_trains_and_a_stage1_lora_stays_frozen(tiny):
    root, base = tiny
    _train(root, base, "tallrec", kind="tallrec")
    stage1 = _lora(root / "tallrec")
    assert any(np.abs(b).max() > 0 for b in stage1["b"].values())  # stage 1 trained its B
    _train(root, base, "collm", kind="collm", lora_from=str(root / "tallrec"))
    res = evaluate_run(root / "collm", ("test",), progress=False)
    assert res["method"] == "collm" and res["models"]["CoLLM-MF"]["test"]["rows"] == 48
    assert np.isfinite(res["models"]["CoLLM-MF"]["test"]["auc"])
    # stage 2 trained its MLP only: the TALLRec LoRA it loaded is unchanged
    jax.tree.map(np.testing.assert_array_equal, stage1, _lora(root / "tallrec"))
    _train(root, base, "personprompt", kind="personprompt", lora_from=str(root / "tallrec"))
    _train(root, base, "prompt4nr", kind="prompt4nr")
    binary = BinaryCodeConfig(bits=8, epochs=2)
    _train(root, base, "binllm", kind="binllm", binary=binary)
    # BinLLM wrote its codes into the prompt as text and kept them in its run dir
    setup = load_setup(dataclasses.replace(base, method=MethodConfig(kind="binllm", binary=binary), out=str(root / "binllm")))
    prompt = split_prompts(setup.dataset, setup.dataset["test"].take([0]), setup.prompt_cfg, setup.features)[0]
    assert (root / "binllm" / "binary_codes.npz").is_file() and USER_SLOT not in prompt
    assert len(prompt.split("encoded in the feature ")[1].split(".")[0]) == 8


def test_slot_batches_carry_slots_and_ids(tiny):
    root, base = tiny
    setup = load_setup(dataclasses.replace(base, method=MethodConfig(kind="collm")))
    inputs = prepare_split(setup, setup.dataset["valid"])
    b = make_batch(inputs, np.arange(4), setup.tokenizer.pad_id, 8)
    assert sorted(b.present()) == ["e_i", "e_u", "ids", "iid", "label", "mask", "slot", "uid"]
    assert ((b.slot == 1).sum(axis=1) == 1).all() and ((b.slot == 2).sum(axis=1) == 1).all()
    assert (b.mask[b.slot > 0] == 1).all()


def test_bad_baseline_requests_stop_before_training(tiny):
    root, base = tiny
    with pytest.raises(ValueError, match="unknown method"):
        dataclasses.replace(base, method=MethodConfig(kind="gpt")).validate()
    with pytest.raises(ValueError, match="lora.targets"):
        MethodConfig(kind="tallrec", lora=LoRAConfig(targets="qkvof")).validate()
    with pytest.raises(SetupError, match="not a training run directory"):
        train(dataclasses.replace(base, method=MethodConfig(kind="collm", lora_from=str(root / "nowhere")),
                                  out=str(root / "bad")))


def test_configs_stored_before_the_baselines_existed_still_match():
    from cora_jax.train.checkpoint import config_diff
    from cora_jax.train.config import to_dict, with_defaults

    old = to_dict(TrainConfig())
    del old["method"], old["with_titles"]
    assert config_diff(old, to_dict(TrainConfig()))  # without the defaults filled in, the run would be refused
    assert config_diff(with_defaults(old), to_dict(TrainConfig())) == []

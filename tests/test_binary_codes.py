"""BinLLM binary codes: straight-through sign, text formats, .npz round trip, training on ML-100K."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cora_jax.assets import MissingAssetError
from cora_jax.baselines.binary_codes import (
    BinaryCodeConfig, BinaryCodes, code_text, load_codes, save_codes, st_sign, train_binary_codes,
)
from cora_jax.cf import CFModelSpec, FrozenCF, build_model

ROW = np.unpackbits(np.array([105, 3, 255, 0], np.uint8))  # 32 bits, most significant first


def test_st_sign_is_exact_sign_forward_and_tanh_gradient_backward():
    x = jnp.array([-3.0, -0.2, -1e-7, 0.0, 1e-7, 0.5, 4.0])
    np.testing.assert_array_equal(st_sign(x), [-1, -1, -1, 1, 1, 1, 1])
    w = jnp.arange(1.0, 8.0)  # distinct weights so every element's gradient is checked separately
    grad = jax.grad(lambda v: jnp.sum(w * st_sign(v)))(x)
    np.testing.assert_allclose(grad, w * (1.0 - jnp.tanh(x) ** 2), rtol=1e-6)


def test_code_text_formats():
    assert code_text(ROW, "bits") == "01101001000000111111111100000000"
    assert code_text(ROW, "dotdecimal") == "105.3.255.0"
    codes = BinaryCodes(user=ROW[None], item=ROW[None], metrics={}, config=BinaryCodeConfig(text="dotdecimal"))
    assert codes.user_text(0) == "105.3.255.0" and codes.item_text(0, "bits") == code_text(ROW, "bits")
    with pytest.raises(ValueError, match="hex"):
        code_text(ROW, "hex")
    with pytest.raises(ValueError, match="multiple of 8"):
        code_text(ROW[:12], "dotdecimal")
    with pytest.raises(ValueError, match="0/1"):
        code_text(ROW * 2, "bits")


@pytest.mark.parametrize("bits", [0, 12, -8])
def test_config_rejects_bits_not_a_positive_multiple_of_8(bits):
    with pytest.raises(ValueError, match="bits"):
        BinaryCodeConfig(bits=bits).validate()


def _codes(bits: int = 16) -> BinaryCodes:
    rng = np.random.default_rng(0)
    return BinaryCodes(
        user=rng.integers(0, 2, (5, bits), dtype=np.uint8), item=rng.integers(0, 2, (7, bits), dtype=np.uint8),
        metrics={"train_auc": 0.9, "scale": 5.0, "bias": 0.1}, config=BinaryCodeConfig(bits=bits, text="dotdecimal"),
    )


def test_save_load_round_trip(tmp_path):
    codes = _codes()
    save_codes(codes, tmp_path / "codes.npz")
    back = load_codes(tmp_path / "codes.npz")
    np.testing.assert_array_equal(back.user, codes.user)
    np.testing.assert_array_equal(back.item, codes.item)
    assert back.user.dtype == np.uint8 and back.config == codes.config and back.metrics == codes.metrics
    np.testing.assert_array_equal(back.scores(np.arange(5), np.arange(5)), codes.scores(np.arange(5), np.arange(5)))


def test_load_rejects_bad_files(tmp_path):
    path = tmp_path / "codes.npz"
    with pytest.raises(FileNotFoundError, match="codes.npz"):
        load_codes(path)
    save_codes(_codes(), path)
    path.write_bytes(path.read_bytes()[:200])  # truncated: the zip directory at the end is gone
    with pytest.raises(ValueError, match="codes.npz"):
        load_codes(path)

    good = _codes()
    arrays = {"user": good.user, "item": good.item, "config": np.asarray('{"bits": 16}'),
              "metrics": np.asarray('{"scale": 5.0, "bias": 0.0}')}
    # None = the array is left out of the file
    for field, bad in {"item": None, "user": good.user.astype(np.int64), "config": np.asarray("{bits")}.items():
        np.savez(path, **{k: v for k, v in {**arrays, field: bad}.items() if v is not None})
        with pytest.raises(ValueError, match=f"codes.npz.*'{field}'"):
            load_codes(path)
    save_codes(dataclasses.replace(good, item=good.item[:, :8]), path)  # 8 columns, config says 16 bits
    with pytest.raises(ValueError, match="codes.npz.*'item'.*bits=16"):
        load_codes(path)


def _svd_mf(ds, dim: int) -> FrozenCF:
    """An MF fitted in closed form (truncated SVD of the +-1 train label matrix): real data, no checkpoint."""
    train = ds["train"]
    labels = np.zeros((ds.user_num, ds.item_num), np.float32)
    np.add.at(labels, (train.uid, train.iid), 2.0 * train.label - 1.0)
    u, s, vt = np.linalg.svd(labels, full_matrices=False)
    spec = CFModelSpec(kind="mf", dim=dim, user_num=ds.user_num, item_num=ds.item_num)
    model = build_model(spec)
    model.user_emb[...] = u[:, :dim] * np.sqrt(s[:dim])
    model.item_emb[...] = vt[:dim].T * np.sqrt(s[:dim])
    return FrozenCF(model, spec)


@pytest.mark.slow
def test_train_on_ml100k_beats_chance_on_warm_valid():
    from cora_jax.data import ensure_ml100k, load_dataset

    try:
        ds = load_dataset(ensure_ml100k())
    except MissingAssetError as e:
        pytest.skip(str(e))
    cf, cfg = _svd_mf(ds, dim=16), BinaryCodeConfig(bits=32, epochs=5)
    # warm rows only: cold ids have (near) zero MF embeddings, hence one shared code and no signal
    codes = train_binary_codes(cf, ds["train"], ds["valid_warm"], cfg, progress=False)
    # the same initial projection, (almost) untrained: random-hyperplane codes already carry some signal
    untrained = train_binary_codes(cf, ds["train"], ds["valid_warm"], dataclasses.replace(cfg, lr=1e-9), progress=False)
    assert codes.user.shape == (ds.user_num, 32) and codes.item.shape == (ds.item_num, 32)
    assert codes.user.dtype == np.uint8 and set(np.unique(codes.item)) == {0, 1}
    # measured: train AUC 0.862 vs 0.822 untrained, warm valid AUC 0.657 vs 0.569
    assert codes.metrics["train_auc"] > untrained.metrics["train_auc"] + 0.02
    assert codes.metrics["valid_auc"] > max(0.6, untrained.metrics["valid_auc"] + 0.03)
    assert codes.metrics["train_loss"] < untrained.metrics["train_loss"]
    assert len(codes.user_text(1, "dotdecimal").split(".")) == 4


def test_non_mf_cf_is_refused():
    spec = CFModelSpec(kind="lightgcn", dim=8, user_num=5, item_num=6)
    cf = FrozenCF(build_model(spec), spec)
    with pytest.raises(ValueError, match="lightgcn"):
        train_binary_codes(cf, None, None, BinaryCodeConfig(), progress=False)

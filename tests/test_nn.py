"""The shared dropout: its rate, its scale, its determinism, eval mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cora_jax.nn import dropout


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_drops_at_the_rate_and_keeps_the_mean(rate):
    x = jnp.ones((64, 33, 101), jnp.float32)
    y = np.asarray(dropout(x, rate, jax.random.key(3)))
    n = y.size
    assert abs(float(np.mean(y == 0)) - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # five standard errors
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)


def test_masks_differ_along_every_axis_and_repeat_with_the_key():
    x = jnp.ones((4, 8, 64), jnp.float32)
    a, b = dropout(x, 0.5, jax.random.key(0)), dropout(x, 0.5, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(dropout(x, 0.5, jax.random.key(1))))
    m = np.asarray(a) == 0
    assert not np.array_equal(m[0], m[1]) and not np.array_equal(m[:, 0], m[:, 1])


def test_identity_without_key_or_rate_and_dtype_kept():
    x = jnp.arange(12, dtype=jnp.bfloat16).reshape(3, 4)
    assert dropout(x, 0.3, None) is x and dropout(x, 0.0, jax.random.key(0)) is x
    assert dropout(x, 0.3, jax.random.key(0)).dtype == jnp.bfloat16

"""cora_jax: CoRA (Collaborative LoRA) in JAX/Flax."""

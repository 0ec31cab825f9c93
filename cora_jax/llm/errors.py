"""The errors of the LLM loaders, in a module of their own so that the config, tokenizer, GGUF and
weight readers can all raise them without importing one another."""
from __future__ import annotations

from cora_jax.errors import CoraError


class ConfigError(CoraError, ValueError):
    """A config.json / GGUF header that does not describe a Llama model we can build."""


class WeightError(CoraError, ValueError):
    """A checkpoint that does not match the model: names the tensor and the file."""

"""Llama-family decoder in Flax NNX with per-sample low-rank weight deltas: any projection can add a side
branch scale * (dropout(x) A) B with A and/or B per sample, never a merged weight (docs/reference.md#where-g-goes).

Public API:
    LlamaConfig, RopeScaling      model configuration (from HF config.json or GGUF metadata)
    Llama, LowRankDelta           the decoder and the side-branch weight delta it accepts
    TARGETS, INPUTS, INPUT_OF     the projections a delta can target, by the input they read
    PROJECTION_AXES               each projection's logical (input, output) axes, for sharding
    load_llm                      weights + tokenizer from an HF dir, a .gguf file, or the embedded SmolLM2
    Tokenizer                     BOS-prepending encoder, answer-token lookup, left-padded batches
"""
from .config import PROJECTION_AXES, LlamaConfig, RopeScaling, llama2_7b, smollm2_135m
from .errors import ConfigError, WeightError
from .low_rank import INPUT_OF, INPUTS, TARGETS, LowRankDelta
from .model import Llama
from .tokenizer import Tokenizer, length_buckets
from .weights import load_llm, load_weights

__all__ = [
    "ConfigError", "PROJECTION_AXES", "LlamaConfig", "RopeScaling", "llama2_7b", "smollm2_135m",
    "TARGETS", "INPUTS", "INPUT_OF", "Llama", "LowRankDelta",
    "Tokenizer", "length_buckets",
    "WeightError", "load_llm", "load_weights",
]

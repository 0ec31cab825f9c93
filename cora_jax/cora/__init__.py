"""CoRA: the collaborative weights generator and the scorer that feeds its G into a frozen Llama.

Public API:
    GeneratorConfig, CollabWeightGenerator     [e_u; e_i] -> G [B, d_model, r]
    CoRAConfig, CoRA, TARGET_PRESETS, TRAINABLE  the scorer (Yes logit), weight-type presets, the
                                               nnx filter selecting the trainable parameters
"""
from .generator import CollabWeightGenerator, GeneratorConfig
from .model import G_AXES, TARGET_PRESETS, TRAINABLE, CoRA, CoRAConfig, training_loss

__all__ = [
    "CollabWeightGenerator", "GeneratorConfig",
    "G_AXES", "TARGET_PRESETS", "TRAINABLE", "CoRA", "CoRAConfig", "training_loss",
]

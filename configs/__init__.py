"""Named experiment presets (frozen dataclasses). `PRESETS[name]` -> TrainConfig; `get_preset(name)`."""
from configs.baselines import PRESETS as BASELINE_PRESETS
from configs.cora import PRESETS as CORA_PRESETS
from cora_jax.errors import CoraError

PRESETS = {**CORA_PRESETS, **BASELINE_PRESETS}


class UnknownPresetError(CoraError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_preset(name: str):
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r} (--preset): choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


__all__ = ["PRESETS", "UnknownPresetError", "get_preset"]

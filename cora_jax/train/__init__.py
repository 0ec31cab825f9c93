"""Training and evaluation of CoRA: optimiser + schedule, loop with early stopping, Orbax checkpoints.

Public API:
    OptimConfig, make_optimizer, make_schedule, decay_mask      optim.py
    TrainConfig, from_dict, to_dict                             config.py
    MeshConfig (TrainConfig.mesh), init_distributed, make_mesh  mesh.py
    train                                                       loop.py
    load_setup, SetupError                                      setup.py
    RunCheckpoints, ConfigMismatchError                         checkpoint.py
    evaluate_run, evaluate_zero_shot                            evaluate.py
    ModelResult (a results.json model entry), read_models       results.py
"""
from .checkpoint import ConfigMismatchError, RunCheckpoints
from .config import TrainConfig, from_dict, to_dict
from .mesh import MeshConfig, init_distributed, make_mesh
from .optim import OptimConfig, decay_mask, make_optimizer, make_schedule
from .setup import SetupError, load_setup

__all__ = [
    "ConfigMismatchError", "RunCheckpoints", "TrainConfig", "from_dict", "to_dict", "SetupError", "load_setup",
    "train", "MeshConfig", "init_distributed", "make_mesh", "OptimConfig", "decay_mask", "make_optimizer", "make_schedule",
]


def __getattr__(name: str):
    """`train` is imported on first use, so that scoring and reporting never load the training loop."""
    if name == "train":
        from .loop import train
        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

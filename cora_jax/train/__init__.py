"""Training and evaluation of CoRA: optimiser + schedule, loop with early stopping, Orbax checkpoints.

Public API:
    OptimConfig, make_optimizer, make_schedule, decay_mask      optim.py
    TrainConfig, from_dict, to_dict                             config.py
    MeshConfig (TrainConfig.mesh), init_distributed, make_mesh  mesh.py
    train, load_setup, SetupError                               loop.py
    RunCheckpoints, ConfigMismatchError                         checkpoint.py
    evaluate_run, evaluate_zero_shot                            evaluate.py
"""
from .checkpoint import ConfigMismatchError, RunCheckpoints
from .config import TrainConfig, from_dict, to_dict
from .loop import SetupError, load_setup, train
from .mesh import MeshConfig, init_distributed, make_mesh
from .optim import OptimConfig, decay_mask, make_optimizer, make_schedule

__all__ = [
    "ConfigMismatchError", "RunCheckpoints", "TrainConfig", "from_dict", "to_dict", "SetupError", "load_setup",
    "train", "MeshConfig", "init_distributed", "make_mesh", "OptimConfig", "decay_mask", "make_optimizer", "make_schedule",
]

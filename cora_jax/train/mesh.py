"""Device meshes and the shardings of parameters and batches on them (the logical-axis rules: cora_jax.sharding;
the sharded steps: cora_jax.train.steps).

One mesh with three named axes:
    data   - pure data parallelism (batch split, parameters replicated along it)
    fsdp   - batch split *and* the frozen LLM's weights split (ZeRO-3 / FSDP style): each device
             holds 1/fsdp of every weight matrix and XLA all-gathers a layer's weights inside the
             scanned layer body when it needs them
    tensor - optional Megatron-style split of attention heads and the FFN width (size 1 by default)

Layers never name mesh axes. Every parameter is created with logical axis names in its `axes` metadata
(the Llama's weights: layers, vocab, embed, q_heads, kv_heads, mlp, norm; CoRA's P, own A and generator
output: layers, rank, gen_out and the projection's axes); PARAM_RULES map them to mesh axes (the optimiser
state follows its parameter), ACTIVATION_RULES the batches and CoRA's per-sample factors G [B, d, r].
Changing the parallelism is editing a table or the MeshConfig, never a layer.

Multi-host (one process per host, every host running the same command; checkpoints on a shared
filesystem):
    python train.py cora ... --mesh.distributed     # SLURM / Open MPI / k8s / TPU: detected
    python train.py cora ... --mesh.distributed --mesh.coordinator HOST0:PORT \
        --mesh.num-processes 2 --mesh.process-id {0,1}        # anywhere else
`init_distributed` (called by train / evaluate before any other jax use) starts jax.distributed;
the mesh then spans every process's devices. Every process builds the same global numpy batch
(cheap host arrays) and `shard_batch` hands jax only the rows its own devices hold
(jax.make_array_from_process_local_data); `to_host` gathers batch-sharded results back. On a single
process (this repository's tests and CPU runs) the local rows are the whole batch. The frozen LLM
is loaded the same way: every process reads the weight files and hands each of its devices only its
slice of each weight (`param_sharding_of` for load_llm), so no device holds a whole LLM.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cora_jax.batch import Batch
from cora_jax.errors import FlagError
from cora_jax.sharding import ACTIVATION_RULES, PARAM_RULES, Rules, spec_for

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1            # data-parallel axis size; -1 = all devices left over by the others
    fsdp: int = -1           # FSDP axis size (batch + frozen-weight split); -1 = all devices left over by the others
    tensor: int = 1          # tensor-parallel axis size (heads / FFN width); -1 = fill
    distributed: bool = False  # multi-host: start jax.distributed first (one process per host)
    coordinator: str | None = None     # distributed: HOST:PORT of process 0; None = cluster env or JAX_COORDINATOR_ADDRESS
    num_processes: int | None = None   # distributed: process count; None = detected (SLURM, Open MPI, k8s, TPU)
    process_id: int | None = None      # distributed: this process's index; None = detected

    def validate(self) -> None:
        """The checks that need no device count; raises FlagError naming the bad field."""
        if sum(s == -1 for s in (self.data, self.fsdp, self.tensor)) > 1:
            raise FlagError(MESH_AXES, f"= {self.data}/{self.fsdp}/{self.tensor}: at most one axis may be -1")
        for name, s in zip(MESH_AXES, (self.data, self.fsdp, self.tensor)):
            if s == 0 or s < -1:
                raise FlagError(name, f"must be >= 1 or -1, got {s}")

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes for n_devices; raises ValueError naming the bad field."""
        self.validate()
        sizes = [self.data, self.fsdp, self.tensor]
        fill = [i for i, s in enumerate(sizes) if s == -1]
        fixed = math.prod(s for s in sizes if s != -1)
        if fill:
            if n_devices % fixed:
                raise ValueError(f"MeshConfig: {n_devices} devices are not divisible by the fixed axes' product {fixed}")
            sizes[fill[0]] = n_devices // fixed
        if math.prod(sizes) != n_devices:
            raise ValueError(f"MeshConfig: data*fsdp*tensor = {math.prod(sizes)} but {n_devices} devices are available")
        return tuple(sizes)


def init_distributed(cfg: MeshConfig) -> None:
    """Multi-host start-up: jax.distributed.initialize() with cfg's coordinator / process count /
    process id, each None one detected from the cluster environment (SLURM, Open MPI, k8s, TPU
    pods; JAX_COORDINATOR_ADDRESS for the address). A no-op unless cfg.distributed or when already
    started; must run before any other jax call."""
    if cfg.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axis types (GSPMD propagates shardings).

    devices=None: every device when an axis is -1; with all sizes fixed on a single process, the
    first data*fsdp*tensor devices (a multi-process mesh always spans every device)."""
    if devices is None:
        devices = jax.devices()
        if -1 not in (cfg.data, cfg.fsdp, cfg.tensor) and jax.process_count() == 1:
            devices = devices[: cfg.data * cfg.fsdp * cfg.tensor]
    devices = list(devices)
    shape = cfg.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


# ------------------------------------------------------------------------------ shardings
def _value(var):
    """The array (or ShapeDtypeStruct) inside a Variable, or the leaf itself."""
    return var.get_value() if isinstance(var, nnx.Variable) else var


def _logical_axes(var) -> tuple[str | None, ...]:
    """The `axes` a variable was created with; replicated without them (small trainables: norms, queries)."""
    axes = var.get_metadata().get("axes") if isinstance(var, nnx.Variable) else None
    return tuple(axes) if axes is not None else (None,) * np.ndim(_value(var))


def _sharding(var, mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, spec_for(_logical_axes(var), np.shape(_value(var)), mesh, rules))


def state_shardings(state: Any, mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES) -> Any:
    """Same-structure tree of NamedShardings for an nnx State (or any pytree of Variables/arrays)."""
    def one(var):
        sharding = _sharding(var, mesh, rules)
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_sharding_of(mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES) -> Callable[[nnx.Variable], NamedSharding]:
    """The sharding state_shardings gives one parameter (by its logical axes), as a function of the
    parameter: load_llm(sharding_of=...) places each weight with it as it loads."""
    return lambda var: _sharding(var, mesh, rules)


def opt_state_shardings(tx: optax.GradientTransformation, opt_state: Any, param_shardings: Any,
                        mesh: jax.sharding.Mesh) -> Any:
    """Optimiser-state shardings: each parameter-shaped subtree (Adam mu, nu) follows its
    parameter; everything else (step counts) is replicated."""
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, s: s, opt_state, param_shardings,
                                 transform_non_params=lambda x: jax.tree.map(lambda _: replicated, x))


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> NamedSharding:
    """Sharding of every per-sample array: the leading (batch) dimension over the batch axes."""
    axes = tuple(a for a in (dict(rules).get("batch") or ()) if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> int:
    """Global batch sizes must be a multiple of this (the product of the batch mesh axes)."""
    return math.prod(mesh.shape[a] for a in (dict(rules).get("batch") or ()))


def process_rows(global_rows: int, mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> slice | np.ndarray:
    """The rows of a global batch that this process's devices hold (in order): all rows on a
    single process; with several, the union of its devices' shards of the batch dimension."""
    index_map = batch_sharding(mesh, rules).addressable_devices_indices_map((global_rows,))
    ranges = sorted({idx[0].indices(global_rows)[:2] for idx in index_map.values()})
    if all(a == b for (_, a), (b, _) in zip(ranges, ranges[1:])):
        return slice(ranges[0][0], ranges[-1][1])
    return np.concatenate([np.arange(a, b) for a, b in ranges])


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> Batch:
    """Global jax.Arrays of a global numpy batch (the same on every process).

    Each process hands jax only the rows its own devices hold (`process_rows`,
    jax.make_array_from_process_local_data), so no batch data crosses hosts.
    """
    sharding = batch_sharding(mesh, rules)
    n = batch_divisor(mesh, rules)
    out = {}
    for k, v in batch.present().items():
        v = np.asarray(v)
        if v.shape[0] % n:
            raise ValueError(f"batch.{k}: global batch {v.shape[0]} is not divisible by the batch mesh axes ({n} devices)")
        out[k] = jax.make_array_from_process_local_data(sharding, v[process_rows(v.shape[0], mesh, rules)], v.shape)
    return dataclasses.replace(batch, **out)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host, batch-sharded) array as numpy, on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agree(flag: bool) -> bool:
    """Process 0's value of a host-side decision (e.g. a wall-clock budget), on every process."""
    return flag if jax.process_count() == 1 else bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))

"""Device meshes, logical-axis sharding rules and sharded (jitted) CoRA train/eval steps.

One mesh with three named axes:
    data   - pure data parallelism (batch split, parameters replicated along it)
    fsdp   - batch split *and* the frozen LLM's weights split (ZeRO-3 / FSDP style): each device
             holds 1/fsdp of every weight matrix and XLA all-gathers a layer's weights inside the
             scanned layer body when it needs them
    tensor - optional Megatron-style split of attention heads and the FFN width (size 1 by default)

Layers never name mesh axes. Every Llama parameter carries logical axis names in its `axes`
metadata (cora_jax/llm/model.py: layers, vocab, embed, q_heads, kv_heads, mlp, norm); the CoRA
trainables (generator, P, own A) get theirs from their path (`trainable_axes`). Two rule tables
map logical names to mesh axes: PARAM_RULES for parameters (and the optimiser state, which
follows its parameter) and ACTIVATION_RULES for batches and the per-sample factors G [B, d, r].
Changing the parallelism is editing a table or the MeshConfig, never a layer.

A logical axis is dropped (replicated) when its mesh axes are already used by an earlier dimension
of the same array or do not divide the dimension, so every model shape works on every mesh.

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
from functools import partial
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cora_jax.errors import FlagError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of axes, or None = replicated).
Rules = tuple[tuple[str, Any], ...]

PARAM_RULES: Rules = (
    ("layers", None),        # the scanned layer axis stays whole: scan slices it per step
    ("vocab", None),         # only K answer rows of the head are read; keep gathers cheap
    ("embed", "fsdp"),       # d_model: the largest axis every weight has -> FSDP split
    ("q_heads", "tensor"),   # attention heads x head_dim
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),       # FFN width
    ("norm", None),          # RMSNorm scales: tiny
    ("rank", None),          # r of G and P: tiny
    ("gen_out", "fsdp"),     # generator's final Linear output, d_model * r (33.6M weights at 7B)
)

ACTIVATION_RULES: Rules = (
    ("batch", BATCH_AXES),   # every per-sample array: ids, mask, e_u, e_i, labels, G, scores
    ("length", None),
    ("embed", None),
    ("rank", None),
)

# Logical axes of the per-sample factor G [B, d_model, r] under ACTIVATION_RULES.
G_AXES = ("batch", "embed", "rank")

# Logical in/out axes of each LowRankDelta target (for the P [L, r, d_out] and own-A [L, d_in, r] factors).
_TARGET_IO = {
    "q_proj": ("embed", "q_heads"), "k_proj": ("embed", "kv_heads"), "v_proj": ("embed", "kv_heads"),
    "o_proj": ("q_heads", "embed"), "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
}


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


# ------------------------------------------------------------------------------ rules -> specs
def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh, rules: Rules) -> P:
    """PartitionSpec of an array with these logical axes under `rules`.

    A logical name absent from the rules, a mesh axis already used by an earlier dimension, or a
    mesh-axis product that does not divide the dimension leaves that dimension replicated.
    """
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match an array of shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def trainable_axes(path: Sequence[str], shape: Sequence[int]) -> tuple[str | None, ...]:
    """Logical axes of a CoRA trainable that has no `axes` metadata, from its path:
    generator.proj -> gen_out on its output axis; p.<target> [L, r, d_out]; own_a.<target>
    [L, d_in, r]; anything else (generator blocks, queries, norms: small) replicated."""
    names = list(path)
    if "generator" in names and "proj" in names:
        return (None,) * (len(shape) - 1) + ("gen_out",)
    for group in ("p", "own_a"):
        if group in names and names.index(group) + 1 < len(names):
            target = names[names.index(group) + 1]
            if target in _TARGET_IO and len(shape) == 3:
                d_in, d_out = _TARGET_IO[target]
                return ("layers", "rank", d_out) if group == "p" else ("layers", d_in, "rank")
    return (None,) * len(shape)


def _value(var):
    """The array (or ShapeDtypeStruct) inside a Variable, or the leaf itself."""
    return var.get_value() if isinstance(var, nnx.Variable) else var


def _logical_axes(path, var) -> tuple[str | None, ...]:
    axes = var.get_metadata().get("axes") if isinstance(var, nnx.Variable) else None
    shape = np.shape(_value(var))
    return tuple(axes) if axes is not None else trainable_axes(_path_names(path), shape)


def _sharding(path, var, mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, spec_for(_logical_axes(path, var), np.shape(_value(var)), mesh, rules))


def state_shardings(state: Any, mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES) -> Any:
    """Same-structure tree of NamedShardings for an nnx State (or any pytree of Variables/arrays)."""
    def one(path, var):
        sharding = _sharding(path, var, mesh, rules)
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding
    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_sharding_of(mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES) -> Callable[[nnx.Variable], NamedSharding]:
    """The sharding state_shardings gives one parameter (by its logical axes), as a function of the
    parameter: load_llm(sharding_of=...) places each weight with it as it loads."""
    return lambda var: _sharding((), var, mesh, rules)


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


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> dict[str, jax.Array]:
    """Global jax.Arrays of a global numpy batch (the same on every process).

    Each process hands jax only the rows its own devices hold (`process_rows`,
    jax.make_array_from_process_local_data), so no batch data crosses hosts.
    """
    sharding = batch_sharding(mesh, rules)
    n = batch_divisor(mesh, rules)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % n:
            raise ValueError(f"batch[{k!r}]: global batch {v.shape[0]} is not divisible by the batch mesh axes ({n} devices)")
        out[k] = jax.make_array_from_process_local_data(sharding, v[process_rows(v.shape[0], mesh, rules)], v.shape)
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host, batch-sharded) array as numpy, on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agree(flag: bool) -> bool:
    """Process 0's value of a host-side decision (e.g. a wall-clock budget), on every process."""
    return flag if jax.process_count() == 1 else bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))


def constrain_g(g_bdr: jax.Array, mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> jax.Array:
    """Pin the per-sample factors G [B, d_model, r] to their activation sharding (batch-split)."""
    return jax.lax.with_sharding_constraint(g_bdr, NamedSharding(mesh, spec_for(G_AXES, g_bdr.shape, mesh, rules)))


# --------------------------------------------------------------------------- CoRA forward
def cora_scores(model, b: dict, rng: jax.Array | None, mesh: jax.sharding.Mesh | None = None,
                rules: Rules = ACTIVATION_RULES) -> jax.Array:
    """`model.batch_scores` (CoRA or a baseline of cora_jax.baselines) on a batch dict (ids/mask int
    [B, T], e_u/e_i float [B, cf_dim], slot/uid/iid where the method needs them), CoRA's G pinned
    to the activation rules when a mesh is given: "Yes" logits [B]. rng=None -> eval mode."""
    place = None if mesh is None else partial(constrain_g, mesh=mesh, rules=rules)
    return model.batch_scores(b, rng=rng, place_g=place)


def cora_loss_fn(graphdef, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """(trainable, frozen, batch, key) -> mean BCE of the CoRA "Yes" logits + the learned loss offset."""
    def loss(trainable, frozen, b, key):
        model = nnx.merge(graphdef, trainable, frozen)
        s = cora_scores(model, b, key, mesh) + model.loss_offset[...]
        return optax.sigmoid_binary_cross_entropy(s, b["label"]).mean()
    return loss


def cora_eval_fn(graphdef, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """(trainable, frozen, batch) -> eval-mode scores [B]."""
    return lambda trainable, frozen, b: cora_scores(nnx.merge(graphdef, trainable, frozen), b, None, mesh)


# ------------------------------------------------------------------------------ sharded steps
@dataclasses.dataclass(frozen=True)
class ShardedState:
    """Trainable/frozen parameters and optimiser state placed on a mesh, with their shardings."""

    trainable: Any           # nnx.State of the trained parameters (generator, P, own A)
    frozen: Any              # nnx.State of everything else (the LLM)
    opt_state: Any           # optax state of `trainable`
    trainable_sh: Any        # same-structure NamedShardings
    frozen_sh: Any
    opt_sh: Any


def place(trainable, frozen, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
          rules: Rules = PARAM_RULES, opt_state: Any = None) -> ShardedState:
    """Shard both states by `rules` and create (or re-place) the optimiser state beside them."""
    tr_sh, fr_sh = state_shardings(trainable, mesh, rules), state_shardings(frozen, mesh, rules)
    trainable, frozen = jax.device_put(trainable, tr_sh), jax.device_put(frozen, fr_sh)
    abstract_opt = jax.eval_shape(tx.init, trainable) if opt_state is None else opt_state
    opt_sh = opt_state_shardings(tx, abstract_opt, tr_sh, mesh)
    if opt_state is None:
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
    else:
        opt_state = jax.device_put(opt_state, opt_sh)
    return ShardedState(trainable, frozen, opt_state, tr_sh, fr_sh, opt_sh)


def make_sharded_train_step(loss_fn: Callable, tx: optax.GradientTransformation, st: ShardedState,
                            mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, opt_state, frozen, batch, key) -> (trainable, opt_state, loss).

    loss_fn(trainable, frozen, batch, key) -> scalar. Gradients of `trainable` only (the frozen LLM
    is a non-differentiated argument). Explicit in/out shardings; trainable and opt_state are
    donated, so their buffers are updated in place.
    """
    rep, bsh = NamedSharding(mesh, P()), batch_sharding(mesh, rules)

    @partial(jax.jit, in_shardings=(st.trainable_sh, st.opt_sh, st.frozen_sh, bsh, rep),
             out_shardings=(st.trainable_sh, st.opt_sh, rep), donate_argnums=(0, 1))
    def step(trainable, opt_state, frozen, b, key):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, b, key)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss
    return step


def make_sharded_grad_fn(loss_fn: Callable, st: ShardedState, mesh: jax.sharding.Mesh,
                         rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, frozen, batch, key) -> (loss, grads); grads sharded like `trainable`."""
    rep, bsh = NamedSharding(mesh, P()), batch_sharding(mesh, rules)
    return jax.jit(jax.value_and_grad(loss_fn), in_shardings=(st.trainable_sh, st.frozen_sh, bsh, rep),
                   out_shardings=(rep, st.trainable_sh))


def make_sharded_eval_step(score_fn: Callable, st: ShardedState, mesh: jax.sharding.Mesh,
                           rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, frozen, batch) -> scores [B] (batch-sharded)."""
    bsh = batch_sharding(mesh, rules)
    return jax.jit(score_fn, in_shardings=(st.trainable_sh, st.frozen_sh, bsh), out_shardings=bsh)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying concrete NamedShardings: the Orbax restore target that lands
    each restored array directly in its shards (an AbstractMesh does not work with Orbax 0.12)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


"""AdamW with a proper linear warmup + cosine schedule and a weight-decay mask (docs/reference.md#training)."""
from __future__ import annotations

import dataclasses

import jax
import optax

from cora_jax.errors import FlagError

# Path fragments of parameters that never get weight decay (LayerNorm scale/bias, biases).
NO_DECAY_NAMES = ("norm", "bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3                 # peak learning rate (init_lr of the reference)
    warmup_init_lr: float = 1e-5     # learning rate at step 0
    warmup_steps: int = 200          # linear warmup length (steps)
    min_lr: float = 8e-5             # end of the cosine
    decay_steps: int = 20_000        # warmup + cosine length in steps (reference: max_epoch x iters_per_epoch)
    weight_decay: float = 1e-3       # decoupled AdamW decay on >= 2-D non-norm, non-bias parameters
    b1: float = 0.9                  # Adam beta1
    b2: float = 0.999                # Adam beta2
    eps: float = 1e-8                # Adam epsilon
    grad_clip: float | None = None   # global-norm gradient clipping; None = off

    def validate(self) -> None:
        if self.decay_steps <= self.warmup_steps:
            raise FlagError(("decay_steps", "warmup_steps"), f"= {self.decay_steps}/{self.warmup_steps}: the decay must end after the warmup")
        if self.lr <= 0:
            raise FlagError("lr", f"must be > 0, got {self.lr}")
        for name in ("min_lr", "warmup_init_lr"):
            if getattr(self, name) < 0:
                raise FlagError(name, f"must be >= 0, got {getattr(self, name)}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Step -> lr: linear warmup_init_lr -> lr over warmup_steps, then cosine to min_lr at decay_steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=cfg.warmup_init_lr, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.decay_steps, end_value=cfg.min_lr,  # optax's decay_steps includes the warmup
    )


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def decay_mask(params):
    """Same-structure pytree of bools: True for >= 2-D parameters outside norms and biases."""
    def decays(path, leaf) -> bool:
        names = " ".join(_path_names(path)).lower()
        return leaf.ndim >= 2 and not any(n in names for n in NO_DECAY_NAMES)
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    cfg.validate()
    adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw

"""The rows a recommender reads in one step: left-padded prompt tokens plus what each method needs of the
(user, item) pair. A jax pytree, so one Batch goes through jit, sharding and device_put as a whole; an absent
field (None) is an empty subtree, and a Batch of numpy arrays, jax.Arrays or ShapeDtypeStructs is the same type."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    ids: Any                # int32 [B, T] prompt token ids, left-padded
    mask: Any               # int32 [B, T] 1 = a prompt token, 0 = padding
    label: Any = None       # float32 [B] 1 = the user liked the item (training and scoring of labelled rows)
    uid: Any = None         # int32 [B] user ids (PersonPrompt's soft tokens)
    iid: Any = None         # int32 [B] item ids
    slot: Any = None        # int32 [B, T] slot number of each token (0 = text): where soft tokens go
    e_u: Any = None         # float32 [B, cf_dim] the frozen CF model's user embedding (CoRA, CoLLM)
    e_i: Any = None         # float32 [B, cf_dim] its item embedding

    def present(self) -> dict[str, Any]:
        """The fields that are set, by name (for messages and per-field placement)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

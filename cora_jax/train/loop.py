"""CoRA training: setup + validation, length-bucketed batches, the sharded jitted step on a device
mesh (cora_jax.train.mesh; one device is a 1x1x1 mesh), early stopping on valid_small AUC, Orbax
checkpoints (latest + best) and exact resume.

Exact resume: everything a step consumes is a function of (step, seed) or of checkpointed state.
Batch composition comes from `TrainOrder` (a per-pass permutation seeded by (seed, pass)), dropout
keys are `fold_in(key, step)`, and the trainable parameters + optimiser state + early-stopping
counters are restored from the newest intact checkpoint (newer unreadable ones are set aside). A
run killed at any point and restarted with the same config therefore replays the same steps and
ends with the same parameters. The restore lands every array directly in its shards on the
resuming mesh, which may differ from the one that saved.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from cora_jax.cora import TRAINABLE, CoRA
from cora_jax.errors import CoraError, flag_prefix
from cora_jax.train import mesh as M
from cora_jax.train.checkpoint import RunCheckpoints, trained_best_step, write_json
from cora_jax.train.config import RESUMABLE_FIELDS, TrainConfig, from_dict, to_dict, with_defaults
from cora_jax.train.optim import make_optimizer, make_schedule

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class SetupError(CoraError, ValueError):
    """A request that cannot be trained or evaluated (raised before any training step)."""


def make_run_mesh(cfg: M.MeshConfig, **batch_sizes: int) -> jax.sharding.Mesh:
    """The device mesh of `cfg`; each named batch size must split evenly over its batch axes."""
    with flag_prefix("mesh"):
        cfg.validate()
    try:
        mesh = M.make_mesh(cfg)
    except ValueError as err:
        raise SetupError(f"--mesh: {err}") from None
    n = M.batch_divisor(mesh)
    for name, size in batch_sizes.items():
        if size % n:
            shape = " x ".join(f"{k} {v}" for k, v in mesh.shape.items())
            raise SetupError(f"{name} = {size} is not divisible by the mesh's batch axes (data x fsdp = {n}; "
                             f"mesh {shape} on {mesh.size} devices): use a multiple of {n} or another --mesh")
    return mesh


# ----------------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Setup:
    """Everything loaded once per process: data, frozen CF encoder, frozen LLM + tokenizer."""

    dataset: object          # cora_jax.data.Dataset
    cf: object               # cora_jax.cf.FrozenCF
    llm: object              # cora_jax.llm.Llama
    tokenizer: object        # cora_jax.llm.Tokenizer
    answer_id: int           # the "Yes" token id
    prompt_cfg: object       # cora_jax.data.PromptConfig
    slot_tokens: int = 0     # placeholder tokens per prompt slot (input-space baselines); 0 = none
    features: Callable | None = None  # (uid, iid) -> slot texts (BinLLM's codes); None = slot markers


def load_data(data: str):
    from cora_jax.data import ensure_ml100k, load_dataset

    path = ensure_ml100k() if data == "ml100k" else pathlib.Path(data)
    if data != "ml100k" and not pathlib.Path(data).is_dir():
        raise SetupError(f"no such folder (--data {data}): give a split folder "
                         f"({{train,valid,valid_small,test}}.jsonl.gz) or 'ml100k'")
    return load_dataset(path)


def load_frozen_llm(llm: str | None, dtype: str, progress: bool = True, mesh: jax.sharding.Mesh | None = None):
    """The LLM and its tokenizer; with a mesh, every weight is loaded straight into its sharding."""
    from cora_jax.llm import load_llm

    if llm is not None and not pathlib.Path(llm).expanduser().exists():
        raise SetupError(f"no such file or folder (--llm {llm}): give an HF model folder or a .gguf file, "
                         f"or omit --llm for the embedded SmolLM2-135M")
    sharding_of = None if mesh is None else M.param_sharding_of(mesh)
    return load_llm(llm, dtype=jnp.dtype(dtype), progress=progress, sharding_of=sharding_of)


def check_cf_matches(cf, ds, cf_path: str, data: str = "<this data>") -> None:
    """The CF checkpoint must have been trained on this dataset's id space."""
    if (cf.user_num, cf.item_num) != (ds.user_num, ds.item_num):
        raise SetupError(
            f"the CF checkpoint belongs to another dataset: its id space is {cf.user_num} users x {cf.item_num} "
            f"items, the data's {ds.user_num} x {ds.item_num} (--cf {cf_path}): train one on this data with: "
            f"python train.py cf train --data {data} --out <dir>"
        )


def load_setup(cfg: TrainConfig, *, need_cf: bool | None = None, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Load and cross-check data, CF and LLM; raises SetupError with a clear message on a bad request.
    need_cf=None: when the method reads the CF model. mesh: load the LLM's weights sharded over it."""
    from cora_jax.baselines import CF_METHODS, SLOT_METHODS
    from cora_jax.cf import load_cf

    cfg.validate()
    need_cf = cfg.method.kind in CF_METHODS if need_cf is None else need_cf
    ds = load_data(cfg.data)
    cf = None
    if need_cf:
        if not (pathlib.Path(cfg.cf) / "config.json").is_file():
            raise SetupError(
                f"not a CF run directory (--cf {cfg.cf}: no config.json): "
                f"train one with: python train.py cf train --data {cfg.data} --out {cfg.cf}"
            )
        cf = load_cf(cfg.cf)
        check_cf_matches(cf, ds, cfg.cf, cfg.data)
        if cfg.model.cf_dim is not None and cfg.model.cf_dim != cf.dim:
            raise SetupError(f"model.cf_dim = {cfg.model.cf_dim} but the CF checkpoint {cfg.cf} has dim {cf.dim}")
    llm, tok = load_frozen_llm(cfg.llm, cfg.llm_dtype, cfg.progress, mesh)
    if cfg.model.d_model is not None and cfg.model.d_model != llm.config.hidden_size:
        raise SetupError(
            f"model.d_model = {cfg.model.d_model} (the generator's output width) but the LLM "
            f"{cfg.llm or 'SmolLM2-135M'} has hidden_size {llm.config.hidden_size}"
        )
    kind = cfg.method.kind
    features = binllm_features(cfg, ds, cf) if kind == "binllm" else None
    slot_tokens = cfg.method.tokens_per_slot if kind in SLOT_METHODS and kind != "binllm" else 0
    return Setup(ds, cf, llm, tok, tok.answer_token_id("Yes"), make_prompt_config(ds, cfg), slot_tokens, features)


def make_prompt_config(ds, cfg: TrainConfig):
    from cora_jax.baselines import SLOT_METHODS
    from cora_jax.data import PromptConfig

    return PromptConfig(domain=ds.domain, max_titles=cfg.max_titles, with_titles=cfg.with_titles,
                        template="collm" if cfg.method.kind in SLOT_METHODS else "cora")


BINARY_CODES_FILE = "binary_codes.npz"


def binllm_features(cfg: TrainConfig, ds, cf) -> Callable[[int, int], tuple[str, str]]:
    """BinLLM's slot texts. The codes are trained on the CF model once per run and kept in the run dir
    (cfg.out), so that evaluation writes exactly the prompts training saw."""
    from cora_jax.baselines import load_codes, save_codes, train_binary_codes

    path = pathlib.Path(cfg.out) / BINARY_CODES_FILE
    if path.is_file():
        codes = load_codes(path)
    else:
        try:
            codes = train_binary_codes(cf, ds["train"], ds["valid"], cfg.method.binary, progress=cfg.progress)
        except ValueError as err:
            raise SetupError(f"binllm: {err}") from None
        if jax.process_index() == 0:  # the run folder may not exist yet: setup runs before it is created
            path.parent.mkdir(parents=True, exist_ok=True)
            save_codes(codes, path)
    if codes.user.shape[0] != ds.user_num or codes.item.shape[0] != ds.item_num:
        raise SetupError(f"{path}: codes for {codes.user.shape[0]} users x {codes.item.shape[0]} items, "
                         f"but the dataset has {ds.user_num} x {ds.item_num}")
    fmt = cfg.method.binary.text
    return lambda uid, iid: (codes.user_text(uid, fmt), codes.item_text(iid, fmt))


def load_run_config(run_dir: pathlib.Path, flag: str = "--run") -> TrainConfig:
    """The TrainConfig a run was trained with (RUN/config.json); `flag` names where run_dir came from."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        why = f"no {CONFIG_FILE}" if run_dir.is_dir() else "no such folder"
        raise SetupError(f"not a training run directory ({flag} {run_dir}: {why}): "
                         f"give the --out folder of a python train.py cora run")
    return from_dict(TrainConfig, json.loads(path.read_text()), str(path))


def get_split(ds, name: str, limit: int | None, sample_seed: int | None = None):
    """Split `name` (test_warm etc. allowed): its first `limit` rows or, with `sample_seed`, `limit`
    rows drawn at random with that seed (kept in file order). An empty result is an error."""
    try:
        split = ds[name]
    except KeyError as err:
        raise SetupError(f"split {name!r} does not exist in the dataset ({err})") from None
    if limit is not None and limit < len(split):
        idx = np.arange(limit) if sample_seed is None else np.sort(
            np.random.default_rng(sample_seed).choice(len(split), limit, replace=False))
        split = split.take(idx, name=split.name)
    if len(split) == 0:
        raise SetupError(f"split {name!r} is empty: nothing to train on or score")
    return split


@dataclasses.dataclass
class SplitInputs:
    """One split, tokenised and CF-encoded once."""

    split: object                    # cora_jax.data.Split
    tokens: list[np.ndarray]         # per row: int32 prompt ids (BOS first)
    slots: list[np.ndarray] | None   # per row: int32 slot numbers (0 = text token); None = no slots
    lengths: np.ndarray              # int64 [n]
    e_u: np.ndarray | None           # float32 [n, cf_dim] (None: no CF, zero-shot)
    e_i: np.ndarray | None           # float32 [n, cf_dim]
    labels: np.ndarray               # float32 [n]

    def __len__(self) -> int:
        return len(self.tokens)


def prepare_split(setup: Setup, split) -> SplitInputs:
    from cora_jax.data import ITEM_SLOT, USER_SLOT, split_prompts

    prompts = split_prompts(setup.dataset, split, setup.prompt_cfg, setup.features)
    slots = None
    if setup.slot_tokens:
        ids, slot_ids = setup.tokenizer.encode_with_slots(prompts, (USER_SLOT, ITEM_SLOT), setup.slot_tokens)
        slots = [np.asarray(s, np.int32) for s in slot_ids]
    else:
        ids = setup.tokenizer.encode_many(prompts)
    tokens = [np.asarray(t, np.int32) for t in ids]
    e_u = e_i = None
    if setup.cf is not None:
        e_u, e_i = setup.cf.encode(split)
    return SplitInputs(split, tokens, slots, np.array([len(t) for t in tokens]), e_u, e_i,
                       np.asarray(split.label, np.float32))


def make_batch(inputs: SplitInputs, idx: np.ndarray, pad_id: int, multiple: int) -> dict[str, np.ndarray]:
    """Left-padded numpy batch of rows idx: ids/mask [B, T] (T rounded up to `multiple`), uid/iid,
    label, and slot [B, T] / e_u, e_i when the inputs have them."""
    T = int(math.ceil(max(inputs.lengths[idx]) / multiple) * multiple)
    ids = np.full((len(idx), T), pad_id, np.int32)
    mask = np.zeros((len(idx), T), np.int32)
    slot = np.zeros((len(idx), T), np.int32)
    for r, i in enumerate(idx):
        t = inputs.tokens[i]
        ids[r, T - len(t):] = t
        mask[r, T - len(t):] = 1
        if inputs.slots is not None:
            slot[r, T - len(t):] = inputs.slots[i]
    batch = {"ids": ids, "mask": mask, "label": inputs.labels[idx],
             "uid": np.asarray(inputs.split.uid[idx], np.int32), "iid": np.asarray(inputs.split.iid[idx], np.int32)}
    if inputs.slots is not None:
        batch["slot"] = slot
    if inputs.e_u is not None:
        batch["e_u"], batch["e_i"] = inputs.e_u[idx], inputs.e_i[idx]
    return batch


class TrainOrder:
    """Deterministic batch composition: step s (1-based) -> row indices, from (seed, pass) only."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: bool):
        if len(lengths) < batch_size:
            raise SetupError(f"the train split has {len(lengths)} rows, fewer than one batch of {batch_size}")
        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket
        self.per_pass = len(lengths) // batch_size
        self._cache: dict[int, list[np.ndarray]] = {}

    def _pass(self, p: int) -> list[np.ndarray]:
        if p not in self._cache:
            rng = np.random.default_rng([self.seed, p])
            rows = rng.permutation(len(self.lengths))[: self.per_pass * self.batch_size]  # drop a random remainder
            if self.bucket:  # sort the kept rows by length (random tie order), cut, shuffle the batches
                rows = rows[np.argsort(self.lengths[rows], kind="stable")]
                batches = rows.reshape(self.per_pass, self.batch_size)
                batches = batches[rng.permutation(self.per_pass)]
            else:
                batches = rows.reshape(self.per_pass, self.batch_size)
            self._cache = {p: list(batches)}  # only the current pass is kept
        return self._cache[p]

    def indices(self, step: int) -> np.ndarray:
        p, k = divmod(step - 1, self.per_pass)
        return self._pass(p)[k]

    def position(self, step: int) -> dict:
        p, k = divmod(step, self.per_pass)
        return {"pass": p, "batch_in_pass": k, "samples_seen": step * self.batch_size}


# ------------------------------------------------------------------------------ scoring
def score_rows(fn: Callable, inputs: SplitInputs, batch_size: int, pad_id: int, multiple: int,
               mesh: jax.sharding.Mesh, desc: str = "scoring", progress: bool = True) -> np.ndarray:
    """float32 [n] scores of every row; rows are scored in length order, padded to full batches.

    fn: batch of global (batch-sharded) jax.Arrays -> scores [B]; batch_size must be a multiple of
    M.batch_divisor(mesh) (make_run_mesh checks it).
    """
    order = np.argsort(inputs.lengths, kind="stable")
    out = np.zeros(len(inputs), np.float32)
    bar = tqdm(total=len(inputs), desc=desc, unit="row", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        full = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])  # one shape per length bucket
        b = M.shard_batch(make_batch(inputs, full, pad_id, multiple), mesh)
        out[idx] = M.to_host(fn(b))[: len(idx)]
        bar.update(len(idx))
    bar.close()
    return out


def base_score_fn(llm, answer_id: int, mesh: jax.sharding.Mesh) -> Callable:
    """Sharded zero-shot scorer of the frozen base LLM: batch -> [B] "Yes" logits. The LLM's
    weights are placed on `mesh` (and `llm` is pointed at them, so they are held once)."""
    graphdef, state = nnx.split(llm)
    shardings = M.state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    nnx.update(llm, state)
    answer = jnp.asarray([answer_id], jnp.int32)
    bsh = M.batch_sharding(mesh)

    @partial(jax.jit, in_shardings=(shardings, bsh, bsh), out_shardings=bsh)
    def fn(state, ids, mask):
        return nnx.merge(graphdef, state).score(ids, mask, answer)[:, 0]
    return lambda b: fn(state, b["ids"], b["mask"])


def build_model(cfg: TrainConfig, setup: Setup, frozen_lora: dict | None = None) -> nnx.Module:
    """The run's recommender (CoRA or a baseline) around the frozen setup.llm, with fresh trainables
    (and, for mc.lora_from, that run's LoRA loaded and frozen; `frozen_lora`: that LoRA already in
    hand, as load_frozen_lora returns it, e.g. from an exported adapter)."""
    from cora_jax.baselines import CoLLM, PersonPrompt, Prompt4NR, TALLRec

    mc, rngs = cfg.method, nnx.Rngs(params=cfg.seed)
    if mc.kind == "cora":
        return CoRA(cfg.model, setup.llm, setup.cf.dim, setup.answer_id, rngs=rngs)
    lora = None if mc.lora_from is None else frozen_lora if frozen_lora is not None else load_frozen_lora(mc, setup)
    if mc.kind == "collm":
        return CoLLM(mc, setup.llm, setup.answer_id, setup.cf.dim, rngs=rngs, loaded_lora=lora)
    if mc.kind == "prompt4nr":
        return Prompt4NR(mc, setup.llm, setup.answer_id, rngs=rngs, loaded_lora=lora)
    if mc.kind == "personprompt":
        ds = setup.dataset
        return PersonPrompt(mc, setup.llm, setup.answer_id, ds.user_num, ds.item_num, rngs=rngs, loaded_lora=lora)
    return TALLRec(mc, setup.llm, setup.answer_id, rngs=rngs, loaded_lora=lora)  # tallrec, binllm


def load_frozen_lora(mc, setup: Setup) -> dict:
    """{"a": {target: [L, d_in, r]}, "b": {...}} of the best checkpoint of the LoRA run mc.lora_from
    (TALLRec: CoLLM's stage 1), as host arrays."""
    from cora_jax.baselines import CF_METHODS

    run_dir = mc.lora_from
    run = pathlib.Path(run_dir)
    src = load_run_config(run, "--method.lora-from")
    if src.method.kind == "cora" or src.method.lora_from is not None:
        raise SetupError(f"method.lora_from {run_dir!r}: that run ({src.method.kind}"
                         f"{', itself with a frozen LoRA' if src.method.lora_from else ''}) trained no LoRA of its own")
    if src.method.lora != mc.lora:
        raise SetupError(f"method.lora_from {run_dir!r} trained a LoRA {src.method.lora}, but this run asks for {mc.lora}")
    best = trained_best_step(run, f"method.lora_from {run_dir!r}")
    if setup.cf is None and src.method.kind in CF_METHODS:
        raise SetupError(f"method.lora_from {run_dir!r}: that {src.method.kind} run needs the CF model, which this "
                         f"method does not load; take the LoRA of a TALLRec run")
    model = build_model(src, setup)  # only its trainable parameters are restored, its prompt machinery is not used
    _, st = restore_trainable(run, best, model, M.make_mesh(M.MeshConfig()))
    lora = nnx.to_pure_dict(st.trainable)["lora"]
    return jax.tree.map(np.asarray, {"a": dict(lora["a"]), "b": dict(lora["b"])})


def place_model(model: nnx.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
    """(graphdef, M.ShardedState): the model's trainable / frozen parameters and a fresh `tx` state
    sharded over `mesh`. The model's frozen (LLM) variables are pointed at the placed arrays, so the
    LLM is held once, sharded, by the model and by anything else sharing it (Setup.llm)."""
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    st = M.place(trainable, frozen, tx, mesh)
    nnx.update(model, st.frozen)
    return graphdef, st


def checkpoint_tree(trainable, opt_state, key) -> tuple[dict, dict]:
    """The checkpoint's two array items: the pure-dict parameters, and what only resuming needs
    (optimiser-state leaves, raw key data on the host). With the live (placed) arrays they are also
    the restore templates: their shardings are the targets."""
    return nnx.to_pure_dict(trainable), {"opt": jax.tree.leaves(opt_state), "rng": np.asarray(jax.random.key_data(key))}


def pack_state(trainable, opt_state, key) -> tuple[dict, dict]:
    """checkpoint_tree with copies of the arrays (on their devices, same shardings), because the async
    save may still be reading them when the next step donates the buffers."""
    return jax.tree.map(lambda x: x.copy(), checkpoint_tree(trainable, opt_state, key))


def unpack_state(params: dict, resume: dict, st: M.ShardedState):
    """(trainable, opt_state, key) of a restored checkpoint_tree, on st's shardings."""
    trainable = st.trainable
    nnx.replace_by_pure_dict(trainable, params)
    opt_state = jax.tree.unflatten(jax.tree.structure(st.opt_state), resume["opt"])
    trainable, opt_state = jax.device_put((trainable, opt_state), (st.trainable_sh, st.opt_sh))
    return trainable, opt_state, jax.random.wrap_key_data(jnp.asarray(resume["rng"]))


def intact_meta(ckpt: RunCheckpoints, step: int, config: dict) -> dict:
    """Meta of step, after checking that it was written by `config` (ConfigMismatchError) and that
    none of its files is missing or truncated (CheckpointReadError)."""
    meta = ckpt.check_config(step, config, RESUMABLE_FIELDS, normalize=with_defaults)
    ckpt.verify(step)
    return meta


def calibrated_offset(base_scores: np.ndarray, labels: np.ndarray) -> float:
    """The loss offset under which the base scores predict, on average, the rows' positive rate."""
    rate = float(np.clip(labels.mean(), 1e-3, 1 - 1e-3))
    return math.log(rate / (1 - rate)) - float(base_scores.mean())


def set_loss_offset(trainable, st: M.ShardedState, value: float):
    pure = nnx.to_pure_dict(trainable)
    pure["loss_offset"] = jnp.asarray(value, jnp.float32)
    nnx.replace_by_pure_dict(trainable, pure)
    return jax.device_put(trainable, st.trainable_sh)


def restore_trainable(run_dir: str | pathlib.Path, step: int, model: nnx.Module, mesh: jax.sharding.Mesh):
    """(graphdef, M.ShardedState) of `model` placed on `mesh` for scoring (no optimiser state), with the
    trainable parameters of checkpoint `step` restored straight into their shards (the checkpoint's
    optimiser state is not read)."""
    graphdef, st = place_model(model, optax.identity(), mesh)
    ckpt = RunCheckpoints(run_dir, async_save=False, writable=False)
    try:
        params = ckpt.restore_params(step, nnx.to_pure_dict(st.trainable))
    finally:
        ckpt.close()
    nnx.replace_by_pure_dict(st.trainable, params)
    return graphdef, st


# ----------------------------------------------------------------------------- training
def valid_metrics(inputs: SplitInputs, scores: np.ndarray) -> dict:
    from cora_jax.metrics import evaluate_split

    m = evaluate_split(inputs.split, scores)
    return {"valid_auc": m.auc, "valid_uauc": m.uauc, "valid_uauc_users": m.uauc_users}


def _log(path: pathlib.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, setup: Setup | None = None) -> dict:
    """Train (or resume) the run in cfg.out on the device mesh cfg.mesh; returns the summary (also
    written to summary.json). Multi-host (cfg.mesh.distributed): every process runs this with the
    same config; process 0 writes the run's JSON files, all of them the (sharded) checkpoints."""
    M.init_distributed(cfg.mesh)  # before any other jax use
    t_start = time.time()
    cfg.validate()
    mesh = make_run_mesh(cfg.mesh, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size)
    main = jax.process_index() == 0
    run_dir = pathlib.Path(cfg.out)
    config = to_dict(cfg)
    # run_dir is only read until everything has been checked and loaded: a refused resume, a bad
    # flag or a failed load leave it as it was (or absent).
    # The newest intact checkpoint is the resume point; unreadable newer ones are reported once resumed.
    previous = RunCheckpoints(run_dir, async_save=False, writable=False)
    meta, skipped = None, []
    try:
        if previous.latest_step() is not None:
            latest, meta, skipped = previous.newest_intact(lambda s: intact_meta(previous, s, config))
    finally:
        previous.close()
    if meta is not None and meta.get("finished"):
        print(f"{run_dir}: already finished at step {meta['step']} ({meta['stop_reason']}); nothing to do")
        if (run_dir / SUMMARY_FILE).is_file():
            return json.loads((run_dir / SUMMARY_FILE).read_text())
        es = meta["early_stopping"]  # killed after the last checkpoint but before the summary
        return {"run": str(run_dir), "steps": meta["step"], "stop_reason": meta["stop_reason"], "best_step": es["best_step"],
                "best_valid_auc": es["best_auc"], "last_valid_auc": es["last_auc"]}

    setup = setup or load_setup(cfg, mesh=mesh)
    train_in = prepare_split(setup, get_split(setup.dataset, "train", cfg.train_limit))
    valid_in = prepare_split(setup, get_split(setup.dataset, "valid_small", cfg.valid_limit, sample_seed=cfg.seed))
    order = TrainOrder(train_in.lengths, cfg.batch_size, cfg.seed, cfg.bucket_train)

    tx = make_optimizer(cfg.optim)
    schedule = make_schedule(cfg.optim)
    graphdef, st = place_model(build_model(cfg, setup), tx, mesh)
    trainable, opt_state, frozen = st.trainable, st.opt_state, st.frozen
    key = jax.random.key(cfg.seed)
    es = {"best_auc": -math.inf, "best_step": None, "bad_evals": 0, "last_auc": None}
    step = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        reader = RunCheckpoints(run_dir, async_save=False, writable=False)

        def restore(s: int):  # a corrupt array file the size checks missed falls back further
            intact_meta(reader, s, config)
            return reader.restore(s, *checkpoint_tree(trainable, opt_state, key))
        try:
            _, (params, resume, meta), skipped = reader.newest_intact(restore, below=latest, skipped=skipped)
        finally:
            reader.close()
        trainable, opt_state, key = unpack_state(params, resume, st)
        step, es = meta["step"], meta["early_stopping"]
        # the skipped steps are retrained, so their folders go out of the way (kept, for inspection)
        for err, dest in zip(skipped, reader.set_aside([err.step for err in skipped])):
            if main:
                print(f"{err}; resuming from step {step} (moved to {dest})", file=sys.stderr, flush=True)
        print(f"{run_dir}: resuming from step {step} (best valid AUC {es['best_auc']:.4f} at step {es['best_step']})")
    ckpt = RunCheckpoints(run_dir, async_save=cfg.async_checkpoint)
    metrics_path = run_dir / METRICS_FILE
    if main:
        write_json(run_dir / CONFIG_FILE, config)
        _log(metrics_path, {"event": "resume" if step else "start", "step": step, "mesh": dict(mesh.shape),
                            "processes": jax.process_count(), "time": time.time()})

    train_step = M.make_sharded_train_step(M.cora_loss_fn(graphdef, mesh), tx, st, mesh)
    eval_step = M.make_sharded_eval_step(M.cora_eval_fn(graphdef, mesh), st, mesh)
    pad = setup.tokenizer.pad_id
    progress = cfg.progress and main
    if step == 0 and cfg.calibrate_rows:
        cal_in = prepare_split(setup, get_split(setup.dataset, "train", cfg.calibrate_rows, sample_seed=cfg.seed))
        base = score_rows(lambda b: eval_step(trainable, frozen, b), cal_in, cfg.eval_batch_size, pad,
                          cfg.length_bucket, mesh, desc="calibrating", progress=progress)  # P = 0: the base LLM
        trainable = set_loss_offset(trainable, st, calibrated_offset(base, cal_in.labels))

    def evaluate_and_save(step: int, stop_reason: str | None, loss_avg: float | None, rate: float | None) -> str | None:
        scores = score_rows(lambda b: eval_step(trainable, frozen, b), valid_in, cfg.eval_batch_size, pad,
                            cfg.length_bucket, mesh, desc=f"valid_small @ {step}", progress=progress)
        m = valid_metrics(valid_in, scores)
        if m["valid_auc"] > es["best_auc"]:
            es.update(best_auc=m["valid_auc"], best_step=step, bad_evals=0)
        else:
            es["bad_evals"] += 1
        es["last_auc"] = m["valid_auc"]
        if stop_reason is None and es["bad_evals"] >= cfg.patience:
            stop_reason = "patience"
        meta = {
            "step": step, "data_position": order.position(step), "early_stopping": dict(es), "best_step": es["best_step"],
            "finished": stop_reason in ("patience", "max_steps"), "stop_reason": stop_reason, "config": config,
        }
        ckpt.save(step, *pack_state(trainable, opt_state, key), meta, m["valid_auc"])
        if main:
            _log(metrics_path, {"event": "eval", "step": step, **m, "best_auc": es["best_auc"], "best_step": es["best_step"],
                                "bad_evals": es["bad_evals"], "train_loss": loss_avg, "samples_per_s": rate,
                                "lr": float(schedule(step)), "time": time.time()})
        return stop_reason

    def past_budget() -> bool:  # process 0's clock decides, so every process stops at the same step
        return cfg.max_wall_minutes is not None and M.agree(time.time() - t_start > 60 * cfg.max_wall_minutes)

    bar = tqdm(total=cfg.max_steps, initial=step, desc="CoRA", unit="step", disable=not progress)
    losses: list[jax.Array] = []
    stop_reason, t_window, n_window = None, time.time(), 0
    while stop_reason is None and step < cfg.max_steps:
        step += 1
        b = M.shard_batch(make_batch(train_in, order.indices(step), pad, cfg.length_bucket), mesh)
        trainable, opt_state, loss = train_step(trainable, opt_state, frozen, b, jax.random.fold_in(key, step))
        losses.append(loss)
        n_window += cfg.batch_size
        over_budget = past_budget()
        if step % cfg.eval_every == 0 or step == cfg.max_steps or over_budget:
            loss_avg = float(np.mean(jax.device_get(losses)))
            rate = n_window / (time.time() - t_window)
            reason = "max_steps" if step == cfg.max_steps else ("wall_budget" if over_budget else None)
            stop_reason = evaluate_and_save(step, reason, loss_avg, rate)
            if stop_reason is None and past_budget():
                stop_reason = "wall_budget"  # the evaluation itself used up the budget: stop on this checkpoint
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{float(schedule(step)):.2e}", sps=f"{rate:.1f}",
                            valid_auc=f"{es['last_auc']:.4f}")
            losses, t_window, n_window = [], time.time(), 0
        elif step % 10 == 0 or step < 10:
            bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{float(schedule(step)):.2e}",
                            sps=f"{n_window / max(time.time() - t_window, 1e-9):.1f}",
                            valid_auc="-" if es["last_auc"] is None else f"{es['last_auc']:.4f}")
        bar.update(1)
    bar.close()
    ckpt.close()
    if stop_reason == "wall_budget" and step < cfg.max_steps:
        print(f"WARNING: the wall-clock safety budget (max_wall_minutes={cfg.max_wall_minutes}) stopped training at step "
              f"{step} of {cfg.max_steps}: this machine is slower than the preset assumes, and the results will differ "
              "from a run of every step", file=sys.stderr, flush=True)
    summary = {
        "run": str(run_dir), "steps": step, "stop_reason": stop_reason, "best_step": es["best_step"],
        "best_valid_auc": es["best_auc"], "last_valid_auc": es["last_auc"], "wall_s_this_process": time.time() - t_start,
        "train_rows": len(train_in), "valid_rows": len(valid_in),
    }
    if main:
        write_json(run_dir / SUMMARY_FILE, summary)
        _log(metrics_path, {"event": "end", **summary, "time": time.time()})
    return summary

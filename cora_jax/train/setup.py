"""What a run loads before it trains or scores: the device mesh, the data, the frozen CF model and LLM, the
prompt settings (BinLLM: its binary codes), each cross-checked, with a one-line SetupError for a bad request."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cora_jax.errors import CoraError, flag_prefix
from cora_jax.train import mesh as M
from cora_jax.train.config import TrainConfig, from_dict

CONFIG_FILE = "config.json"       # the run's TrainConfig, in its folder
BINARY_CODES_FILE = "binary_codes.npz"


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
    from cora_jax.data import load_dataset, resolve_data_arg

    return load_dataset(resolve_data_arg(data))


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


def load_setup(cfg: TrainConfig, *, need_cf: bool | None = None, mesh: jax.sharding.Mesh | None = None,
               fit_codes: bool = False) -> Setup:
    """Load and cross-check data, CF and LLM; raises SetupError with a clear message on a bad request.
    need_cf=None: when the method reads the CF model. mesh: load the LLM's weights sharded over it.
    fit_codes: BinLLM's first stage, training its binary codes into the run folder when it has none yet
    (training asks for it; scoring a run without codes is refused)."""
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
    features = None
    if kind == "binllm":
        fit = fit_codes and not (pathlib.Path(cfg.out) / BINARY_CODES_FILE).is_file()
        features = code_texts(fit_binary_codes(cfg, ds, cf) if fit else load_binary_codes(cfg, ds), cfg.method.binary.text)
    slot_tokens = cfg.method.tokens_per_slot if kind in SLOT_METHODS and kind != "binllm" else 0
    return Setup(ds, cf, llm, tok, tok.answer_token_id("Yes"), make_prompt_config(ds, cfg), slot_tokens, features)


def make_prompt_config(ds, cfg: TrainConfig):
    from cora_jax.baselines import SLOT_METHODS
    from cora_jax.data import PromptConfig

    return PromptConfig(domain=ds.domain, max_titles=cfg.max_titles, with_titles=cfg.with_titles,
                        template="collm" if cfg.method.kind in SLOT_METHODS else "cora")


def fit_binary_codes(cfg: TrainConfig, ds, cf):
    """BinLLM's first stage: binary codes of every user and item trained on the CF model, kept in the run
    folder (cfg.out) so that evaluation writes exactly the prompts training saw."""
    from cora_jax.baselines import save_codes, train_binary_codes

    try:
        codes = train_binary_codes(cf, ds["train"], ds["valid"], cfg.method.binary, progress=cfg.progress)
    except ValueError as err:
        raise SetupError(f"binllm: {err}") from None
    if jax.process_index() == 0:  # the run folder may not exist yet: setup runs before it is created
        path = pathlib.Path(cfg.out) / BINARY_CODES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_codes(codes, path)
    return codes


def load_binary_codes(cfg: TrainConfig, ds):
    """The codes fit_binary_codes kept in the run folder, checked against the dataset's id space."""
    from cora_jax.baselines import load_codes

    path = pathlib.Path(cfg.out) / BINARY_CODES_FILE
    if not path.is_file():
        raise SetupError(f"{path}: no such file; BinLLM's binary codes are made when its run trains "
                         f"(python train.py cora ... --out {cfg.out})")
    codes = load_codes(path)
    if codes.user.shape[0] != ds.user_num or codes.item.shape[0] != ds.item_num:
        raise SetupError(f"{path}: codes for {codes.user.shape[0]} users x {codes.item.shape[0]} items, "
                         f"but the dataset has {ds.user_num} x {ds.item_num}")
    return codes


def code_texts(codes, fmt: str) -> Callable[[int, int], tuple[str, str]]:
    """BinLLM's slot texts of a (user, item) pair."""
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

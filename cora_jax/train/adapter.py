"""Portable trained adapters: `eval.py export --run DIR --out ADAPTER` writes what a run needs to be
scored elsewhere, as safetensors + JSON only (no Orbax, no pickle); `eval.py --adapter ADAPTER`
scores it through the same code as `eval.py --run`, with the same scores, after checking that the
LLM, the CF checkpoint and the data are the ones it was trained with.

    ADAPTER/adapter.json             format, method, source run and best step, fingerprints: the sha256 of
                                     each file the LLM is read from, the CF model's spec and the sha256 of
                                     its arrays, the data's id space (user_num, item_num)
    ADAPTER/config.json              the run's TrainConfig
    ADAPTER/adapter.safetensors      the trainable parameters of the best checkpoint, flat dotted names
    ADAPTER/frozen_lora.safetensors  runs with method.lora_from: the LoRA they loaded and kept frozen
    ADAPTER/binary_codes.npz         BinLLM: the codes its prompts were written with (plain arrays)
    ADAPTER/peft/                    TALLRec: its LoRA in Hugging Face PEFT's layout (adapter_config.json,
                                     adapter_model.safetensors), for PeftModel.from_pretrained
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time

import jax
import numpy as np
import optax
from flax import nnx

from cora_jax.errors import CoraError
from cora_jax.train import mesh as M
from cora_jax.train.checkpoint import trained_best_step, write_json
from cora_jax.train.config import TrainConfig, from_dict, to_dict
from cora_jax.train.models import build_model, place_model, restore_trainable
from cora_jax.train.setup import BINARY_CODES_FILE, CONFIG_FILE, load_data, load_run_config, load_setup, make_run_mesh

FORMAT = "cora_jax-adapter/1"
MANIFEST, PARAMS_FILE, FROZEN_LORA_FILE, PEFT_DIR = "adapter.json", "adapter.safetensors", "frozen_lora.safetensors", "peft"
# What an HF model folder is read from: its config, weights and tokenizer (the files AutoTokenizer reads).
HF_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded GGUF's source model, for PEFT's config
PEFT_MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp"}


class AdapterError(CoraError, ValueError):
    """An adapter that cannot be written or read, or inputs other than those it was trained with."""


# ------------------------------------------------------------------------------ fingerprints
def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _llm_path(llm: str | None) -> pathlib.Path:
    from cora_jax.assets import smollm2_gguf

    return smollm2_gguf() if llm is None else pathlib.Path(llm).expanduser()


def llm_fingerprint(llm: str | None) -> dict:
    """{"format": "hf" | "gguf", "files": {name: sha256}} of the files the LLM is loaded from (a GGUF
    file holds both weights and tokenizer)."""
    path = _llm_path(llm)
    if path.is_dir():
        files = sorted({p for pattern in HF_FILES for p in path.glob(pattern) if p.is_file()})
        return {"format": "hf", "files": {p.name: _sha256_file(p) for p in files}}
    return {"format": "gguf", "files": {path.name: _sha256_file(path)}}


def _llm_difference(here: dict, there: dict) -> str | None:
    if here["format"] != there["format"]:
        kinds = {"hf": "an HF model folder", "gguf": "a .gguf file"}
        return f"it is {kinds[here['format']]}, the adapter's LLM was {kinds[there['format']]}"
    a, b = here["files"], there["files"]
    if here["format"] == "gguf":  # one file, whatever its name
        (x,), (y,) = a.values(), b.values()
        return None if x == y else f"the .gguf file differs (sha256 {x[:12]} here, {y[:12]} in the adapter)"
    parts = [f"{n} differs (sha256 {a[n][:12]} here, {b[n][:12]} in the adapter)" for n in sorted(set(a) & set(b))
             if a[n] != b[n]]
    parts += [f"{n} is missing" for n in sorted(set(b) - set(a))]
    parts += [f"{n} was not part of it" for n in sorted(set(a) - set(b))]
    return ", ".join(parts) or None


def flat_arrays(tree: dict) -> dict[str, object]:
    """{"a.b.0.c": leaf} of a nested dict (an nnx pure dict)."""
    return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _name(path) -> str:
    return ".".join(str(k.key) for k in path)


def cf_fingerprint(cf) -> dict:
    """The CF model's spec and the sha256 over its arrays (parameters, LightGCN's graph), by name."""
    h = hashlib.sha256()
    for name, a in sorted(flat_arrays(nnx.to_pure_dict(nnx.state(cf.model))).items()):
        a = np.asarray(jax.device_get(a), order="C")
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return {"spec": dataclasses.asdict(cf.spec), "sha256": h.hexdigest()}


def _cf_difference(here: dict, there: dict) -> str | None:
    a, b = here["spec"], there["spec"]
    fields = [f"its {k} is {a.get(k)!r}, the adapter's {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if fields:
        return ", ".join(fields)
    return None if here["sha256"] == there["sha256"] else \
        f"its arrays differ (sha256 {here['sha256'][:12]} here, {there['sha256'][:12]} in the adapter)"


# ---------------------------------------------------------------------------------- export
def _host(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.device_get(v), order="C") for k, v in flat_arrays(tree).items()}


def export_adapter(run_dir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Write the adapter of the run's best checkpoint into `out` (a new or empty folder); returns it."""
    from safetensors.numpy import save_file

    from cora_jax.baselines import FrozenWeight
    from cora_jax.train.evaluate import method_name

    run_dir, out = pathlib.Path(run_dir), pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"--out {out} exists and is not an empty folder: give a new folder")
    stored = load_run_config(run_dir)
    cfg = dataclasses.replace(stored, out=str(run_dir), progress=False)  # out: BinLLM's codes
    best = trained_best_step(run_dir)
    mesh = M.make_mesh(M.MeshConfig())
    setup = load_setup(cfg, mesh=mesh)
    model = build_model(cfg, setup)
    _, st = restore_trainable(run_dir, best, model, mesh)
    params = _host(nnx.to_pure_dict(st.trainable))
    out.mkdir(parents=True, exist_ok=True)
    save_file(params, str(out / PARAMS_FILE))
    if cfg.method.lora_from is not None:
        save_file(_host(nnx.to_pure_dict(nnx.state(model, FrozenWeight))["lora"]), str(out / FROZEN_LORA_FILE))
    if cfg.method.kind == "binllm":  # load_setup has read and checked it
        shutil.copyfile(run_dir / BINARY_CODES_FILE, out / BINARY_CODES_FILE)
    if cfg.method.kind == "tallrec":
        write_peft(out / PEFT_DIR, params, cfg)
    write_json(out / CONFIG_FILE, to_dict(stored))
    ds = setup.dataset
    manifest = {
        "format": FORMAT, "method": method_name(cfg, setup.cf.kind if setup.cf is not None else None),
        "kind": cfg.method.kind, "run": str(run_dir), "best_step": best,
        "llm": {"trained_with": cfg.llm, **llm_fingerprint(cfg.llm)},
        "cf": None if setup.cf is None else {"trained_with": cfg.cf, **cf_fingerprint(setup.cf)},
        "data": {"trained_with": cfg.data, "user_num": ds.user_num, "item_num": ds.item_num},
    }
    write_json(out / MANIFEST, manifest)  # last: a folder without it is no adapter
    return out


def write_peft(out: pathlib.Path, params: dict[str, np.ndarray], cfg: TrainConfig) -> None:
    """A shared LoRA (TALLRec) in PEFT's layout: per layer and target, lora_A.weight [r, d_in] and
    lora_B.weight [d_out, r] (torch Linear weights, i.e. our A [d_in, r] and B [r, d_out] transposed)."""
    from safetensors.numpy import save_file

    from cora_jax.cora import TARGET_PRESETS

    lc = cfg.method.lora
    targets = TARGET_PRESETS[lc.targets]
    tensors = {}
    for t in targets:
        a, b = params[f"lora.a.{t}"], params[f"lora.b.{t}"]  # [L, d_in, r], [L, r, d_out]
        for i in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{i}.{PEFT_MODULES[t]}.{t}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    write_json(out / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": cfg.llm or EMBEDDED_HF_ID,
        "r": lc.rank, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": list(targets),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": None,
    })


# ---------------------------------------------------------------------------------- import
def read_manifest(adapter: pathlib.Path) -> dict:
    path = adapter / MANIFEST
    if not path.is_file():
        why = f"no {MANIFEST}" if adapter.is_dir() else "no such folder"
        raise AdapterError(f"not an adapter folder (--adapter {adapter}: {why}): write one with: "
                           f"python eval.py export --run RUN_DIR --out {adapter}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise AdapterError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}: export the run again")
    return manifest


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise AdapterError(f"{path} is missing: export the run again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"{path}: not a readable safetensors file ({err}): export the run again") from None


def check_inputs(adapter: pathlib.Path, manifest: dict, cfg: TrainConfig) -> None:
    """Refuse an LLM, data or CF checkpoint other than those the adapter was trained with (one line naming
    what differs), before the LLM is loaded."""
    from cora_jax.cf import load_cf

    m_llm = manifest["llm"]
    named = cfg.llm or "the embedded SmolLM2-135M"
    if not _llm_path(cfg.llm).exists():
        raise AdapterError(f"no such file or folder (--llm {cfg.llm}): give --llm the LLM the adapter was trained "
                           f"with ({m_llm['trained_with'] or 'the embedded SmolLM2-135M'})")
    diff = _llm_difference(llm_fingerprint(cfg.llm), m_llm)
    if diff:
        raise AdapterError(f"the LLM is not the one the adapter was trained with (--llm {named}): {diff}; give --llm "
                           f"the LLM it was trained with ({m_llm['trained_with'] or 'the embedded SmolLM2-135M'})")
    m_data = manifest["data"]
    ds = load_data(cfg.data)
    if (ds.user_num, ds.item_num) != (m_data["user_num"], m_data["item_num"]):
        raise AdapterError(f"the data's id space is {ds.user_num} users x {ds.item_num} items, the adapter was trained "
                           f"on {m_data['user_num']} x {m_data['item_num']} (--data {cfg.data}): give --data a split "
                           f"of that id space (it was trained on {m_data['trained_with']})")
    m_cf = manifest["cf"]
    if m_cf is not None:
        if not (pathlib.Path(cfg.cf) / "config.json").is_file():
            raise AdapterError(f"not a CF run directory (--cf {cfg.cf}: no config.json): give --cf the CF checkpoint "
                               f"the adapter was trained with ({m_cf['trained_with']})")
        diff = _cf_difference(cf_fingerprint(load_cf(cfg.cf)), m_cf)
        if diff:
            raise AdapterError(f"the CF checkpoint is not the one the adapter was trained with (--cf {cfg.cf}): {diff}; "
                               f"give --cf the one it was trained with ({m_cf['trained_with']})")
    if cfg.method.kind == "binllm" and not (adapter / BINARY_CODES_FILE).is_file():
        raise AdapterError(f"{adapter / BINARY_CODES_FILE} is missing: a BinLLM adapter needs the codes it was "
                           "trained with: export the run again")


def place_params(model: nnx.Module, params: dict[str, np.ndarray], mesh: jax.sharding.Mesh, where: pathlib.Path):
    """(graphdef, S.ShardedState) of `model` on `mesh` with its trainable parameters set from `params`
    (flat names), each array put straight into its shards."""
    graphdef, st = place_model(model, optax.identity(), mesh)
    template = nnx.to_pure_dict(st.trainable)
    want = flat_arrays(template)
    problems = [f"{n} is missing" for n in sorted(set(want) - set(params))]
    problems += [f"{n} is not a parameter of it" for n in sorted(set(params) - set(want))]
    problems += [f"{n} has shape {params[n].shape} {params[n].dtype}, the model's is {want[n].shape} {want[n].dtype}"
                 for n in sorted(set(want) & set(params))
                 if (params[n].shape, params[n].dtype) != (want[n].shape, want[n].dtype)]
    if problems:
        raise AdapterError(f"{where} does not fit the model of its config.json: {'; '.join(problems[:5])}"
                           f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}")

    def put(path, t):
        a = params[_name(path)]
        return jax.make_array_from_callback(t.shape, t.sharding, lambda idx: a[idx])
    nnx.replace_by_pure_dict(st.trainable, jax.tree_util.tree_map_with_path(put, template))
    return graphdef, st


def evaluate_adapter(adapter: str | pathlib.Path, splits: tuple[str, ...] = ("test", "valid"), limit: int | None = None,
                     out: str | pathlib.Path | None = None, *, llm: str | None = None, cf: str | None = None,
                     data: str | None = None, progress: bool = True, sample_seed: int | None = None,
                     mesh: M.MeshConfig = M.MeshConfig()) -> dict:
    """Score an exported adapter as evaluate_run scores its run (same scores); llm / cf / data default to
    the paths it was trained with. Writes into `out` (default ADAPTER/eval); returns the results dict."""
    from cora_jax.train.evaluate import score_trained

    M.init_distributed(mesh)  # before any other jax use
    t0 = time.time()
    adapter = pathlib.Path(adapter)
    manifest = read_manifest(adapter)
    stored = from_dict(TrainConfig, json.loads((adapter / CONFIG_FILE).read_text()), str(adapter / CONFIG_FILE))
    # out: the adapter's own files (BinLLM's codes)
    cfg = dataclasses.replace(stored, llm=llm or stored.llm, cf=cf or stored.cf, data=data or stored.data,
                              out=str(adapter), progress=progress)
    device_mesh = make_run_mesh(mesh, eval_batch_size=cfg.eval_batch_size)
    check_inputs(adapter, manifest, cfg)
    params = _read_tensors(adapter / PARAMS_FILE)
    frozen = None
    if cfg.method.lora_from is not None:
        lora = _read_tensors(adapter / FROZEN_LORA_FILE)
        frozen = {k: {n.split(".", 1)[1]: v for n, v in lora.items() if n.startswith(k + ".")} for k in ("a", "b")}
    setup = load_setup(cfg, mesh=device_mesh)
    try:
        model = build_model(cfg, setup, frozen_lora=frozen)
    except ValueError as err:
        if frozen is None:
            raise
        raise AdapterError(f"{adapter / FROZEN_LORA_FILE}: {err}") from None
    graphdef, st = place_params(model, params, device_mesh, adapter / PARAMS_FILE)
    best = manifest["best_step"]
    return score_trained(cfg, setup, graphdef, st, device_mesh,
                         source={"run": manifest["run"], "adapter": str(adapter), "best_step": best},
                         label=f"adapter {adapter}, best step {best}", splits=splits, limit=limit,
                         sample_seed=sample_seed, out=pathlib.Path(out or adapter / "eval"), progress=progress, t0=t0)


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    run: str   # run directory (train.py cora --out) whose best checkpoint is exported
    out: str   # a new (or empty) folder for the adapter


def main(argv: list[str]) -> None:
    import tyro

    a = tyro.cli(ExportArgs, args=argv, prog="eval.py export")
    out = export_adapter(a.run, a.out)
    print(out)

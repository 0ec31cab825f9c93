"""Training of the CF backbones as the reference does it (docs/reference.md#cf-backbones; the differences,
such as when early stopping arms: docs/reference.md#differences).

BCE with logits on labelled (u, i, y) pairs, Adam with coupled L2 (torch's Adam(weight_decay)),
shuffled mini-batches, evaluation on the full valid split every epoch, early stopping on valid AUC,
test metrics of the best-valid model. One jitted call runs a whole epoch (lax.scan over batches).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import time
from typing import TYPE_CHECKING, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from cora_jax.cf.frozen import chunked, save_cf, split_batch, state_fns
from cora_jax.cf.models import MODEL_KINDS, CFBatch, CFConfigError, CFModelSpec, bipartite_edges, build_model
from cora_jax.run_files import SCORES, score_records, write_scores

if TYPE_CHECKING:
    from cora_jax.data import Dataset

REFERENCE_LRS = (1e-1, 1e-2, 1e-3)  # the reference grid (docs/reference.md#cf-backbones)
REFERENCE_WDS = (1e-2, 1e-4, 1e-6)
MODEL_LRS = {"mf": 1e-3, "lightgcn": 1e-2, "sasrec": 1e-2}  # the grid points the reference picked on ML-1M


@dataclasses.dataclass(frozen=True)
class CFTrainConfig:
    """Hyper-parameters of one CF training run (defaults: the reference's ML-1M setting of each model)."""

    model: Literal["mf", "lightgcn", "sasrec"] = "mf"  # which backbone
    dim: int = 256  # embedding size
    lr: float | None = None  # learning rate; None = the reference's for the model (MF 1e-3, LightGCN / SASRec 1e-2)
    wd: float = 1e-4  # L2 weight decay (coupled for adam, decoupled for adamw)
    optimizer: Literal["adam", "adamw"] = "adam"  # adam = torch Adam(weight_decay=wd), the reference
    batch_size: int = 1024  # rows per optimiser step
    max_epochs: int = 1000  # upper bound on epochs
    patience: int = 20  # stop after this many epochs without a better valid AUC
    stop_after_gain: float = 0.01  # patience counts only once valid AUC is this far above its first epoch's
                                   # (MF's N(0,1) start sits at chance for ~120 epochs before it learns)
    seed: int = 2023  # init, shuffling and dropout randomness
    n_layers: int = 2  # LightGCN propagation layers
    seq_len: int = 25  # SASRec: number of most recent history items read
    n_blocks: int = 2  # SASRec transformer blocks
    n_heads: int = 1  # SASRec attention heads
    dropout: float = 0.2  # SASRec dropout rate
    progress: bool = True  # show a tqdm bar over epochs

    def validate(self) -> None:
        if self.model not in MODEL_KINDS:
            raise CFConfigError(f"--model {self.model!r} is unknown; choose one of {', '.join(MODEL_KINDS)}")
        for field in ("dim", "batch_size", "max_epochs", "patience"):
            if getattr(self, field) <= 0:
                raise CFConfigError(f"--{field.replace('_', '-')} must be > 0, got {getattr(self, field)}")
        if self.stop_after_gain < 0:
            raise CFConfigError(f"--stop-after-gain must be >= 0, got {self.stop_after_gain}")
        if self.learning_rate <= 0 or self.wd < 0:
            raise CFConfigError(f"--lr must be > 0 and --wd >= 0, got lr={self.learning_rate}, wd={self.wd}")
        if self.optimizer not in ("adam", "adamw"):
            raise CFConfigError(f"--optimizer {self.optimizer!r} is unknown; choose adam or adamw")

    @property
    def learning_rate(self) -> float:
        return MODEL_LRS[self.model] if self.lr is None else self.lr


def make_optimizer(cfg: CFTrainConfig) -> optax.GradientTransformation:
    if cfg.optimizer == "adam":  # L2 added to the gradient before the Adam moments, as torch Adam does
        return optax.chain(optax.add_decayed_weights(cfg.wd), optax.adam(cfg.learning_rate))
    return optax.adamw(cfg.learning_rate, weight_decay=cfg.wd)


def resolve_data(data) -> "Dataset":
    """A Dataset, a split folder, or the word 'ml100k' (the embedded ML-100K split)."""
    from cora_jax.data import Dataset, load_dataset, resolve_data_arg

    if isinstance(data, Dataset):
        return data
    return load_dataset(resolve_data_arg(data))


def model_spec(cfg: CFTrainConfig, ds: "Dataset", n_edges: int = 0) -> CFModelSpec:
    return CFModelSpec(
        kind=cfg.model, dim=cfg.dim, user_num=ds.user_num, item_num=ds.item_num, n_layers=cfg.n_layers,
        n_edges=n_edges, seq_len=cfg.seq_len if cfg.model == "sasrec" else 0, n_blocks=cfg.n_blocks,
        n_heads=cfg.n_heads, dropout=cfg.dropout,
    )


def _epoch_fn(graphdef, tx: optax.GradientTransformation):
    """Jitted full epoch: scan of optimiser steps over [S, B] row indices (mask marks real rows)."""

    @jax.jit
    def run_epoch(params, opt_state, rest, data, idx_sb, mask_sb, key):
        def step(carry, xs):
            params, opt_state = carry
            idx_b, mask_b, step_key = xs
            batch = CFBatch(uid=data["uid"][idx_b], iid=data["iid"][idx_b], hist=data["hist"][idx_b])
            label_b = data["label"][idx_b]

            def loss_fn(p):
                logits_b = nnx.merge(graphdef, p, rest).score(batch, key=step_key)
                per_row = optax.sigmoid_binary_cross_entropy(logits_b, label_b)
                return jnp.sum(per_row * mask_b) / jnp.sum(mask_b)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, idx_sb.shape[0])
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (idx_sb, mask_sb, keys))
        return params, opt_state, jnp.mean(losses)

    return run_epoch


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A shuffled epoch as [S, B] indices and a [S, B] mask; the last batch is partial (no row dropped)."""
    steps = -(-n // batch_size)
    perm = np.zeros(steps * batch_size, np.int32)
    perm[:n] = rng.permutation(n)
    mask = np.zeros(steps * batch_size, np.float32)
    mask[:n] = 1.0
    return perm.reshape(steps, batch_size), mask.reshape(steps, batch_size)


class CFTrainer:
    """One CF model ready to train on a dataset: the model, its split parameters and optimiser state,
    the jitted epoch and scorer, and the train split on device (what train_cf and bench/ share)."""

    def __init__(self, cfg: CFTrainConfig, ds: "Dataset"):
        self.cfg = cfg
        train = ds["train"]
        edges = None
        if cfg.model == "lightgcn":
            edges = bipartite_edges(train.uid, train.iid, train.label, ds.user_num, ds.item_num)
        self.spec = model_spec(cfg, ds, n_edges=0 if edges is None else len(edges[0]))
        self.model = build_model(self.spec, seed=cfg.seed, edges=edges)
        graphdef, self.params, self.rest = nnx.split(self.model, nnx.Param, ...)
        self.tx = make_optimizer(cfg)
        self.opt_state = self.tx.init(self.params)
        self._run_epoch = _epoch_fn(graphdef, self.tx)
        _, self._score_fn = state_fns(graphdef)
        tb = split_batch(train, self.spec.seq_len)
        self.n_train = len(train)
        self.train_data = {"uid": jnp.asarray(tb.uid), "iid": jnp.asarray(tb.iid), "hist": jnp.asarray(tb.hist),
                           "label": jnp.asarray(train.label, jnp.float32)}

    def epoch(self, params, opt_state, rng: np.random.Generator, key: jax.Array):
        """One shuffled pass over train (order from rng): (params, opt_state, mean loss)."""
        idx_sb, mask_sb = epoch_batches(rng, self.n_train, self.cfg.batch_size)
        return self._run_epoch(params, opt_state, self.rest, self.train_data, idx_sb, mask_sb, key)

    def scores(self, params, batch: CFBatch) -> np.ndarray:
        return chunked(lambda b: self._score_fn((params, self.rest), b), batch)


def _metrics_dict(m) -> dict:
    return {"auc": m.auc, "uauc": m.uauc, "uauc_users": m.uauc_users, "users": m.users, "rows": m.rows}


def _check_splits(ds: "Dataset") -> None:
    for name in ("train", "valid", "test"):
        if name not in ds.splits or len(ds.splits[name]) == 0:
            raise CFConfigError(f"split {name!r} of dataset {ds.root} is empty or missing; CF training needs train, valid and test rows")
    if len(np.unique(ds["valid"].label)) < 2:
        raise CFConfigError(f"split 'valid' of dataset {ds.root} has a single label class; valid AUC (early stopping) is undefined")


def train_cf(cfg: CFTrainConfig, data, out_dir) -> dict:
    """Train one CF model; save the best-valid model to out_dir; return (and write) its results.

    data: a split folder, a cora_jax.data.Dataset, or "ml100k".
    """
    from cora_jax import metrics

    t0 = time.perf_counter()
    cfg.validate()
    ds = resolve_data(data)
    _check_splits(ds)
    out_dir = pathlib.Path(out_dir)
    valid, test = ds["valid"], ds["test"]
    run = CFTrainer(cfg, ds)
    params, opt_state = run.params, run.opt_state
    valid_batch = split_batch(valid, run.spec.seq_len)

    rng = np.random.default_rng(cfg.seed)
    base_key = jax.random.key(cfg.seed + 1)
    best = {"auc": -np.inf, "epoch": -1}
    best_params = None
    epochs_log = []
    out_dir.mkdir(parents=True, exist_ok=True)
    t_train = time.perf_counter()
    bar = tqdm(range(cfg.max_epochs), desc=f"cf {cfg.model}", disable=not cfg.progress, dynamic_ncols=True)
    with (out_dir / "epochs.jsonl").open("w") as log_file, bar:  # the log is written as it goes
        for epoch in bar:
            params, opt_state, loss = run.epoch(params, opt_state, rng, jax.random.fold_in(base_key, epoch))
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"CF training diverged at epoch {epoch} (loss {loss}); lower lr={cfg.learning_rate}")
            vm = metrics.evaluate_split(valid, run.scores(params, valid_batch))
            epochs_log.append({"epoch": epoch, "loss": loss, "valid_auc": vm.auc, "valid_uauc": vm.uauc})
            log_file.write(json.dumps(epochs_log[-1]) + "\n")
            log_file.flush()
            if vm.auc > best["auc"]:
                best = {"auc": vm.auc, "epoch": epoch, "valid": _metrics_dict(vm)}
                best_params = jax.tree.map(lambda a: np.array(a, copy=True), params)
            bar.set_postfix(loss=f"{loss:.4f}", valid_auc=f"{vm.auc:.4f}", best=f"{best['auc']:.4f}@{best['epoch']}")
            armed = best["auc"] >= epochs_log[0]["valid_auc"] + cfg.stop_after_gain
            if armed and epoch - best["epoch"] >= cfg.patience:
                break
    train_s = time.perf_counter() - t_train
    epochs_run = len(epochs_log)

    nnx.update(run.model, best_params)
    test_scores = run.scores(nnx.state(run.model, nnx.Param), split_batch(test, run.spec.seq_len))
    report = metrics.warm_cold_report(test, test_scores)
    results = {
        "model": cfg.model,
        "data": str(ds.root) if ds.root is not None else "<in-memory dataset>",  # "ml100k" is loaded from its cache folder
        "lr": cfg.learning_rate,
        "wd": cfg.wd,
        "optimizer": cfg.optimizer,
        "seed": cfg.seed,
        "best_epoch": best["epoch"],
        "epochs_run": epochs_run,
        "valid": best["valid"],
        "test": _metrics_dict(report[test.name]),
        "test_warm": _metrics_dict(report[f"{test.name}_warm"]),
        "test_cold": _metrics_dict(report[f"{test.name}_cold"]),
        "train_s": round(train_s, 2),
        "epochs_per_s": round(epochs_run / train_s, 3),
        "wall_s": None,
        "out": str(out_dir),
    }
    save_cf(run.model, run.spec, out_dir, extra={"train": dataclasses.asdict(cfg), "data": results["data"]})
    write_scores(out_dir / SCORES, score_records(cfg.model, test.name, test, test_scores))  # for paired tests
    results["wall_s"] = round(time.perf_counter() - t0, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def grid_cf(cfg: CFTrainConfig, data, out_dir, lrs=REFERENCE_LRS, wds=REFERENCE_WDS) -> dict:
    """Train every (lr, wd) into out_dir/lr{lr}_wd{wd}; pick by valid AUC; write grid.json and grid.md."""
    ds = resolve_data(data)
    out_dir = pathlib.Path(out_dir)
    rows = []
    for lr, wd in itertools.product(lrs, wds):
        run_dir = out_dir / f"lr{lr:g}_wd{wd:g}"
        try:
            res = train_cf(dataclasses.replace(cfg, lr=lr, wd=wd), ds, run_dir)
        except FloatingPointError as err:  # a diverging corner of the grid is a result, not a crash
            res = {"lr": lr, "wd": wd, "error": str(err), "out": str(run_dir)}
        rows.append(res)
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise RuntimeError(f"every grid point of {cfg.model} diverged; see {out_dir}")
    best = max(ok, key=lambda r: r["valid"]["auc"])
    summary = {"model": cfg.model, "best": best, "runs": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grid.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {cfg.model} grid on {best['data']}", "",
             "| lr | wd | best epoch | valid AUC | valid UAUC | test AUC | test UAUC | warm AUC | cold AUC | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['lr']:g} | {r['wd']:g} | diverged | | | | | | | |")
            continue
        mark = " **best**" if r is best else ""
        lines.append(
            f"| {r['lr']:g} | {r['wd']:g} | {r['best_epoch']}{mark} | {r['valid']['auc']:.4f} | {r['valid']['uauc']:.4f} | "
            f"{r['test']['auc']:.4f} | {r['test']['uauc']:.4f} | {r['test_warm']['auc']:.4f} | "
            f"{r['test_cold']['auc']:.4f} | {r['wall_s']:.1f} |"
        )
    (out_dir / "grid.md").write_text("\n".join(lines) + "\n")
    return summary

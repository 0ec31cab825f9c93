"""CF training on a small synthetic split: learning, determinism, checkpoint round trip, bad input."""
import json

import numpy as np
import pytest

from cora_jax.cf import CFConfigError, CFModelSpec, CFTrainConfig, build_model, load_cf, main_cf, save_cf, train_cf
from cora_jax.data import Dataset, Split
from cora_jax.run_files import read_scores

N_USERS, N_ITEMS, PER_USER = 60, 80, 40


def _split(name, flag, rows) -> Split:
    hist = [np.asarray([0] + h, np.int32) for *_, h in rows]
    lengths = np.array([len(h) for h in hist], np.int64)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    col = lambda k, dt: np.array([r[k] for r in rows], dt)  # noqa: E731
    return Split(
        name=name, row=col(0, np.int64), uid=col(1, np.int32), iid=col(2, np.int32), label=col(3, np.int32),
        timestamp=col(4, np.int64), flag=np.full(len(rows), flag, np.int32), not_cold=col(5, np.int32),
        his_values=np.concatenate(hist) if hist else np.zeros(0, np.int32), his_offsets=offsets,
    )


def synthetic_dataset(seed: int = 0) -> Dataset:
    """Users and items with 3-d latent tastes; label = taste match; per user: first 60% train, then valid, test."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(N_USERS + 1, 3))
    q = rng.normal(size=(N_ITEMS + 1, 3))
    rows = {"train": [], "valid": [], "test": []}
    row = 0
    for u in range(1, N_USERS + 1):
        items = rng.choice(np.arange(1, N_ITEMS + 1), PER_USER, replace=False)
        positives = []
        for t, i in enumerate(items):
            label = int(p[u] @ q[i] + 0.3 * rng.normal() > 0)
            split = "train" if t < 0.6 * PER_USER else "valid" if t < 0.8 * PER_USER else "test"
            rows[split].append((row, u, int(i), label, 1000 * u + t, 1, list(positives)))
            row += 1
            if label:
                positives.append(int(i))
    train_items = {r[2] for r in rows["train"]}
    for split in ("valid", "test"):  # every user is in train; an item may not be
        rows[split] = [r[:5] + (int(r[2] in train_items), r[6]) for r in rows[split]]
    splits = {"train": _split("train", -1, rows["train"]), "valid": _split("valid", 0, rows["valid"]),
              "test": _split("test", 1, rows["test"])}
    splits["valid_small"] = splits["valid"].take(np.arange(0, len(splits["valid"]), 2), "valid_small")
    return Dataset(root=None, splits=splits, user_num=N_USERS + 1, item_num=N_ITEMS + 1,
                   item_titles=np.array([""] * (N_ITEMS + 1), dtype=object), domain="movie")


@pytest.fixture(scope="module")
def synth() -> Dataset:
    return synthetic_dataset()


FAST = dict(dim=16, batch_size=128, max_epochs=12, patience=12, progress=False)
SETTINGS = {
    "mf": dict(model="mf", lr=1e-1, wd=1e-6),
    "lightgcn": dict(model="lightgcn", lr=5e-2, wd=1e-6),
    "sasrec": dict(model="sasrec", lr=1e-2, wd=1e-6, seq_len=8, n_blocks=1, dropout=0.1),
}
MIN_AUC = {"mf": 0.65, "lightgcn": 0.7, "sasrec": 0.6}  # random scores give 0.5


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "sasrec"])
def test_training_beats_random_and_checkpoint_round_trips(kind, synth, tmp_path):
    res = train_cf(CFTrainConfig(**FAST, **SETTINGS[kind]), synth, tmp_path)
    assert res["valid"]["auc"] > MIN_AUC[kind], res
    assert res["test"]["auc"] > MIN_AUC[kind] - 0.05, res
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["test"] == res["test"] and on_disk["best_epoch"] == res["best_epoch"]
    epochs = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert max(e["valid_auc"] for e in epochs) == pytest.approx(res["valid"]["auc"])

    # The saved model is the best-valid one: its test scores reproduce the reported test AUC.
    from cora_jax.metrics import evaluate_split

    frozen = load_cf(tmp_path)
    assert (frozen.kind, frozen.dim, frozen.user_num, frozen.item_num) == (kind, 16, N_USERS + 1, N_ITEMS + 1)
    assert frozen.seq_len == (8 if kind == "sasrec" else 0)
    scores = frozen.scores(synth["test"])
    assert scores.dtype == np.float32 and scores.shape == (len(synth["test"]),)
    assert evaluate_split(synth["test"], scores).auc == pytest.approx(res["test"]["auc"], abs=1e-6)
    e_u, e_i = frozen.encode(synth["test"])
    assert e_u.shape == e_i.shape == (len(synth["test"]), 16) and e_u.dtype == np.float32
    np.testing.assert_allclose(np.sum(e_u * e_i, -1), scores, rtol=1e-4, atol=1e-4)

    # The per-row test scores beside results.json (for the report's paired tests) are the saved model's.
    rows = read_scores(tmp_path / "scores.jsonl")
    assert [(r["uid"], r["iid"], r["label"]) for r in rows] == list(zip(synth["test"].uid.tolist(), synth["test"].iid.tolist(),
                                                                        synth["test"].label.tolist()))
    assert {r["model"] for r in rows} == {kind} and {r["split"] for r in rows} == {"test"}
    np.testing.assert_allclose([r["score"] for r in rows], scores, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_is_deterministic(synth, tmp_path):
    cfg = CFTrainConfig(**{**FAST, "max_epochs": 2}, **SETTINGS["sasrec"])  # sasrec: dropout randomness too
    a = train_cf(cfg, synth, tmp_path / "a")
    b = train_cf(cfg, synth, tmp_path / "b")
    assert (tmp_path / "a/epochs.jsonl").read_text() == (tmp_path / "b/epochs.jsonl").read_text()
    assert a["test"] == b["test"]
    train_cf(CFTrainConfig(**{**FAST, "max_epochs": 2, "seed": 7}, **SETTINGS["sasrec"]), synth, tmp_path / "c")
    assert (tmp_path / "c/epochs.jsonl").read_text() != (tmp_path / "a/epochs.jsonl").read_text()


def test_save_load_identical_scores(synth, tmp_path):
    spec = CFModelSpec(kind="sasrec", dim=16, user_num=N_USERS + 1, item_num=N_ITEMS + 1, seq_len=8)
    model = build_model(spec, seed=3)
    save_cf(model, spec, tmp_path)
    frozen = load_cf(tmp_path)
    from cora_jax.cf.frozen import FrozenCF

    np.testing.assert_array_equal(frozen.scores(synth["valid"]), FrozenCF(model, spec).scores(synth["valid"]))


def test_bad_configs(synth, tmp_path):
    with pytest.raises(CFConfigError, match="unknown"):
        train_cf(CFTrainConfig(model="bpr"), synth, tmp_path)
    with pytest.raises(CFConfigError, match="dim must be > 0"):
        train_cf(CFTrainConfig(dim=0), synth, tmp_path)
    with pytest.raises(CFConfigError, match="patience"):
        train_cf(CFTrainConfig(patience=0), synth, tmp_path)
    empty = Dataset(root=None, splits={**synth.splits, "train": synth["train"].take(np.zeros(0, np.int64))},
                    user_num=synth.user_num, item_num=synth.item_num, item_titles=synth.item_titles, domain="movie")
    with pytest.raises(CFConfigError, match="'train'.*empty"):
        train_cf(CFTrainConfig(**FAST), empty, tmp_path)
    with pytest.raises(SystemExit):  # the CLI refuses an unknown model before doing anything
        main_cf(["train", "--data", "x", "--out", str(tmp_path), "--model", "bpr"])
    with pytest.raises(FileNotFoundError, match="not a CF run directory"):
        load_cf(tmp_path / "nothing")


def test_frozen_rejects_foreign_ids(synth, tmp_path):
    spec = CFModelSpec(kind="mf", dim=8, user_num=10, item_num=N_ITEMS + 1)  # fewer users than the split has
    save_cf(build_model(spec), spec, tmp_path)
    with pytest.raises(ValueError, match="uid"):
        load_cf(tmp_path).encode(synth["test"])


def test_grid_picks_best_valid(synth, tmp_path):
    from cora_jax.cf import grid_cf

    cfg = CFTrainConfig(**{**FAST, "max_epochs": 3}, model="mf")
    summary = grid_cf(cfg, synth, tmp_path, lrs=(1e-1, 1e-4), wds=(1e-6,))
    runs = summary["runs"]
    assert [(r["lr"], r["wd"]) for r in runs] == [(1e-1, 1e-6), (1e-4, 1e-6)]
    assert summary["best"]["valid"]["auc"] == max(r["valid"]["auc"] for r in runs)
    assert summary["best"]["lr"] == 1e-1  # lr 1e-4 barely moves N(0,1) embeddings in 3 epochs
    table = (tmp_path / "grid.md").read_text()
    assert "**best**" in table and table.count("\n| 0.") == 2
    assert json.loads((tmp_path / "grid.json").read_text())["best"]["out"] == str(tmp_path / "lr0.1_wd1e-06")
    load_cf(tmp_path / "lr0.1_wd1e-06")  # every grid point is a loadable run directory


@pytest.mark.slow
def test_mf_defaults_wait_for_learning(synth, tmp_path):
    """MF's N(0,1) start sits at chance for hundreds of epochs here; plain patience would stop there."""
    res = train_cf(CFTrainConfig(batch_size=128, progress=False), synth, tmp_path / "default")
    assert res["lr"] == 1e-3 and res["valid"]["auc"] > 0.85 and res["test"]["auc"] > 0.85, res
    impatient = train_cf(CFTrainConfig(batch_size=128, stop_after_gain=0.0, progress=False), synth, tmp_path / "impatient")
    assert impatient["epochs_run"] <= 21 + 20 and impatient["test"]["auc"] < 0.55, impatient


def test_learning_rate_defaults_per_model():
    assert [CFTrainConfig(model=m).learning_rate for m in ("mf", "lightgcn", "sasrec")] == [1e-3, 1e-2, 1e-2]
    assert CFTrainConfig(model="lightgcn", lr=3e-3).learning_rate == 3e-3

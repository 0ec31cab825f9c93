"""Presets and the train.py / eval.py command lines: every preset builds, bad requests stop early."""
import dataclasses
import importlib.util
import json
import pathlib
import sys

import pytest
import tyro

from configs import PRESETS, get_preset
from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.data import DataError
from cora_jax.train import TrainConfig, load_setup, train
from cora_jax.train.paired_test import scored_test_rows
from cora_jax.train.report_records import load_results
from cora_jax.train.setup import SetupError, get_split
from cora_jax.train.tiny import tiny_dataset
from cli_helpers import error_line

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips_through_the_cli(name):
    cfg = get_preset(name)
    cfg.validate()
    assert tyro.cli(TrainConfig, default=cfg, args=[]) == cfg
    over = tyro.cli(TrainConfig, default=cfg, args=["--model.rank", "8", "--optim.lr", "5e-4", "--batch-size", "2"])
    assert (over.model.rank, over.optim.lr, over.batch_size) == (8, 5e-4, 2) and over.data == cfg.data


def test_paper_presets_follow_the_reference():
    mf, lgcn, sas = PRESETS["cora-mf-ml1m"], PRESETS["cora-lightgcn-ml1m"], PRESETS["cora-sasrec-ml1m"]
    assert (mf.model.rank, mf.model.alpha / mf.model.rank, mf.batch_size, mf.eval_every, mf.patience) == (16, 2.0, 8, 100, 20)
    assert mf.optim.lr == 1e-3 and mf.optim.warmup_steps == 200 and mf.optim.min_lr == 8e-5 and mf.model.targets == "qkvo"
    assert lgcn.model.rank == sas.model.rank == 64 and lgcn.optim.lr == sas.optim.lr == 1e-3
    assert PRESETS["cora-mf-ml1m-7b"].model.d_model == 4096 and PRESETS["cora-mf-ml1m-90min"].max_wall_minutes == 90.0
    g = mf.model.generator
    assert (g.num_queries, g.num_layers, g.hidden, g.num_heads, g.ffn_dim, g.dropout, g.ln_eps) == (4, 8, 512, 8, 3072, 0.1, 1e-12)


@pytest.mark.parametrize("steps", [64, 160, 480])
def test_a_step_budget_trains_every_method_on_the_same_batches(steps):
    """The methods of one budget differ only in method, learning rate, CF backbone and (CoRA) rank; stage 1 of
    CoLLM / PersonPrompt is the out folder of a TALLRec preset."""
    budget = {k: v for k, v in PRESETS.items() if k.endswith(f"-{steps}steps")}
    assert {"cora-mf-ml1m", "tallrec-ml1m", "collm-mf-ml1m", "prompt4nr-ml1m", "personprompt-ml1m", "binllm-ml1m"} <= {
        k.removesuffix(f"-{steps}steps") for k in budget}
    shared = {(c.max_steps, c.batch_size, c.eval_every, c.valid_limit, c.max_titles, c.seed, c.optim.decay_steps,
               c.optim.warmup_steps, c.bucket_train) for c in budget.values()}
    assert len(shared) == 1 and next(iter(shared))[:2] == (steps, 8)
    tallrec_outs = {c.out for k, c in PRESETS.items() if k.startswith("tallrec-ml1m-")}
    for c in budget.values():
        assert c.method.lora_from in tallrec_outs | {None}
        assert (c.method.lora_from is not None) == (c.method.kind in ("collm", "personprompt"))


def test_unknown_preset_and_unknown_command_exit_with_the_list(capsys):
    train_cli = _load("train")
    line = error_line(capsys, train_cli.main, ["cora", "--preset", "cora-mf-ml2m"])
    assert "unknown preset 'cora-mf-ml2m' (--preset)" in line and "cora-mf-ml1m" in line
    assert "use one of cora, cf, demo, presets" in error_line(capsys, train_cli.main, ["fit"])


def test_eval_cli_needs_run_or_zero_shot(capsys):
    eval_cli = _load("eval")
    assert "exactly one of --run" in error_line(capsys, eval_cli.main, ["--limit", "3"])
    assert "--zero-shot needs --data" in error_line(capsys, eval_cli.main, ["--zero-shot"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_world):
    root = tmp_path_factory.mktemp("cli")
    other = tiny_dataset(root / "other", rows={"train": 40, "valid": 20, "valid_small": 10, "test": 20})
    train_cf(CFTrainConfig(dim=8, max_epochs=1, progress=False), str(other), root / "cf-other")
    return root, tiny_world("cora")


def _cfg(root, world, **kw) -> TrainConfig:
    base = TrainConfig(data=str(world.data), llm=str(world.llm), cf=str(world.cf), out=str(root / "run"), max_titles=3)
    return dataclasses.replace(base, **kw)


def test_cf_checkpoint_of_another_id_space_stops_before_training(tiny):
    root, world = tiny
    with pytest.raises(SetupError, match="belongs to another dataset"):
        train(_cfg(root, world, cf=str(root / "cf-other")))
    assert not (root / "run" / "checkpoints").exists() or not any((root / "run" / "checkpoints").iterdir())


def test_llm_dimension_mismatch_stops_before_training(tiny):
    root, world = tiny
    cfg = _cfg(root, world)
    with pytest.raises(SetupError, match="hidden_size 32"):
        train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=576)))
    with pytest.raises(SetupError, match="no such file or folder"):
        train(dataclasses.replace(cfg, llm=str(root / "missing-llm")))
    with pytest.raises(SetupError, match="not a CF run directory"):
        train(dataclasses.replace(cfg, cf=str(root / "missing-cf")))


def test_empty_split_stops_with_a_clear_message(tiny):
    root, world = tiny
    setup = load_setup(_cfg(root, world))
    assert len(setup.dataset["test"].warm()) == 0  # the tiny subset's test users are all cold
    with pytest.raises(SetupError, match="split 'test_warm' is empty"):
        get_split(setup.dataset, "test_warm", None)
    with pytest.raises(SetupError, match="does not exist"):
        get_split(setup.dataset, "tset", None)
    # an empty split file is refused by the loader itself, naming the file
    empty = tiny_dataset(root / "empty", rows={"train": 40, "valid": 20, "valid_small": 0, "test": 20})
    with pytest.raises(DataError, match="valid_small.jsonl.gz:1: empty file"):
        train(_cfg(root, world, data=str(empty)))


def test_zero_shot_cli_scores_the_base_llm(tiny):
    root, world = tiny
    out = root / "zs"
    _load("eval").main(["--zero-shot", "--llm", str(world.llm), "--data", str(world.data), "--cf", str(world.cf),
                        "--split", "test", "--limit", "12", "--out", str(out), "--max-titles", "3", "--no-progress"])
    res = json.loads((out / "results.json").read_text())
    icl, cf = res["models"]["ICL (zero-shot base LLM)"], res["models"]["MF (CF, same rows)"]
    assert icl["test"]["rows"] == 12 and cf["test"]["rows"] == 12
    assert (icl["method"], icl["role"], icl["limit"], icl["scores_tag"]) == ("ICL", "zero-shot", 12, "ICL")
    assert (cf["method"], cf["role"], cf["scores_tag"]) == ("MF", "cf", None)
    assert len((out / "scores.jsonl").read_text().splitlines()) == 12
    records = load_results([str(out)])  # as eval.py report reads it: by those fields
    assert [(r["label"], r["role"], r["llm"]) for r in records] == [("ICL", "zero-shot", res["llm"]), ("MF", "cf", "–")]
    assert len(scored_test_rows(records[0], {})["key"]) == 12


@pytest.fixture(scope="module")
def broken_llms(tiny):
    """LLM inputs that cannot be loaded: pickled weights only, a truncated file, a missing tensor, a corrupt GGUF."""
    from safetensors.numpy import load_file, save_file

    root, world = tiny
    llm = world.llm
    out = root / "broken-llms"
    paths = {name: out / name for name in ("bin_only", "truncated", "missing_tensor")}
    for name, path in paths.items():
        path.mkdir(parents=True)
        if name != "bin_only":
            (path / "config.json").write_bytes((llm / "config.json").read_bytes())
    (paths["bin_only"] / "pytorch_model.bin").write_bytes(b"pickled")
    weights = (llm / "model.safetensors").read_bytes()
    (paths["truncated"] / "model.safetensors").write_bytes(weights[:-100])
    tensors = load_file(llm / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, paths["missing_tensor"] / "model.safetensors")
    paths["corrupt_gguf"] = out / "model.gguf"
    paths["corrupt_gguf"].write_bytes(b"GGUF" + bytes(20))
    return paths


def _train_argv(world, out, **flags) -> list[str]:
    args = {"--data": str(world.data), "--llm": str(world.llm), "--cf": str(world.cf), "--out": str(out), "--max-titles": "3",
            **flags}
    return ["cora", "--preset", "demo-ml100k", "--no-progress", *(x for kv in args.items() for x in kv)]


TRAIN_REFUSALS = {  # case: (flags, part of the error line); {root} and broken_llms' names are filled in
    "batch_size_0": ({"--batch-size": "0"}, "error: --batch-size must be >= 1, got 0"),
    "unknown_targets": ({"--model.targets": "qkvx"}, "error: --model.targets names an unknown preset 'qkvx'; choose one of"),
    "missing_data": ({"--data": "{root}/no-data"}, "error: no such folder (--data {root}/no-data): give a split folder"),
    "pytorch_bin_only": ({"--llm": "{bin_only}"}, "error: {bin_only}: holds only pickled PyTorch weights"),
    "truncated_safetensors": ({"--llm": "{truncated}"}, "is truncated (needs bytes up to"),
    "missing_tensor": ({"--llm": "{missing_tensor}"},
                       "missing tensor(s) ['model.layers.1.mlp.up_proj.weight']: the weights do not match"),
    "corrupt_gguf": ({"--llm": "{corrupt_gguf}"}, "error: {corrupt_gguf}: not a readable GGUF file"),
    "cf_of_another_dataset": ({"--cf": "{root}/cf-other"}, "error: the CF checkpoint belongs to another dataset"),
}


@pytest.mark.parametrize("case", list(TRAIN_REFUSALS))
def test_train_cli_refuses_in_one_line_and_writes_nothing(tiny, broken_llms, capsys, case):
    root, world = tiny
    names = {"root": root, **broken_llms}
    flags, expected = TRAIN_REFUSALS[case]
    out = root / f"refused-{case}"
    argv = _train_argv(world, out, **{k: v.format(**names) for k, v in flags.items()})
    assert expected.format(**names) in error_line(capsys, _load("train").main, argv)
    assert not out.exists()  # not even an empty run directory


def test_eval_cli_of_a_missing_run_says_what_to_give(tiny, capsys):
    root = tiny[0]
    line = error_line(capsys, _load("eval").main, ["--run", str(root / "no-run")])
    assert line == (f"error: not a training run directory (--run {root / 'no-run'}: no such folder): "
                    "give the --out folder of a python train.py cora run")
    assert not (root / "no-run").exists()


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refused_resume_leaves_the_run_directory_intact(tiny, capsys):
    import numpy as np

    from cora_jax.train import RunCheckpoints
    from cora_jax.train.checkpoint import write_json
    from cora_jax.train.config import to_dict

    root, world = tiny
    run = root / "resumable"
    argv = _train_argv(world, run)
    cfg = tyro.cli(TrainConfig, default=get_preset("demo-ml100k"), args=argv[3:])
    # the run so far: its checkpoint's meta (all a refusal reads) holds the config it was trained with
    ckpt = RunCheckpoints(run, async_save=False)
    ckpt.save(4, {"w": np.zeros(3, np.float32)}, {"opt": np.zeros(3, np.float32)},
              {"step": 4, "finished": False, "config": to_dict(cfg)}, 0.5)
    ckpt.close()
    write_json(run / "config.json", to_dict(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"event": "start", "step": 0}) + "\n")
    before = _files(run)
    line = error_line(capsys, _load("train").main, _train_argv(world, run, **{"--model.rank": "3"}))
    assert line.startswith("error: refusing to resume a run of another configuration (")
    assert f"model.rank: {cfg.model.rank} (checkpoint) vs 3 (requested)" in line
    assert line.endswith("use a new --out folder, or rerun with the checkpoint's settings")
    assert _files(run) == before

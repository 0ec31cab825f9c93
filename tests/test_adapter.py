"""eval.py export / --adapter on tiny trained runs: an adapter (safetensors + JSON only) scores exactly as its
run, without the run; another LLM, CF checkpoint or id space is refused in one line naming what differs; a
TALLRec adapter's PEFT layout loads into transformers + peft and gives the same "Yes" scores."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cora_jax.baselines import MethodConfig
from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.data import PromptConfig, split_prompts, write_dataset
from cora_jax.llm import Tokenizer
from cora_jax.train import train
from cora_jax.train.tiny import tiny_llm_dir
from cli_helpers import error_line
from eval import main

# the mesh the runs trained on, and a seeded draw of rows, given to --run and --adapter alike
pytestmark = pytest.mark.slow  # trains four runs

FLAGS = ["--split", "test", "valid", "--limit", "40", "--sample-seed", "1", "--mesh.fsdp", "1", "--no-progress"]
RUNS = ("cora", "tallrec", "binllm", "collm")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_world):
    world = tiny_world("cora", "collm")
    root = tmp_path_factory.mktemp("adapter")
    methods = {"cora": MethodConfig(), "tallrec": MethodConfig(kind="tallrec"), "binllm": MethodConfig(kind="binllm"),
               "collm": MethodConfig(kind="collm", lora_from=str(root / "tallrec"))}  # tallrec first: collm loads it
    for name in RUNS:
        train(dataclasses.replace(world.base, method=methods[name], out=str(root / name)))
        main(["export", "--run", str(root / name), "--out", str(root / f"{name}-adapter")])
    return root, world


@pytest.mark.parametrize("name", RUNS)
def test_adapter_scores_exactly_as_its_run_without_the_run(runs, name):
    root, _ = runs
    main(["--run", str(root / name), "--out", str(root / f"{name}-eval-run"), *FLAGS])
    # the adapter alone: its run (and the run whose LoRA collm loaded) moved out of reach
    away = [root / n for n in ((name, "tallrec") if name == "collm" else (name,))]
    for run in away:
        run.rename(run.with_name(run.name + "-away"))
    try:
        main(["--adapter", str(root / f"{name}-adapter"), "--out", str(root / f"{name}-eval-adapter"), *FLAGS])
    finally:
        for run in away:
            run.with_name(run.name + "-away").rename(run)
    got = (root / f"{name}-eval-adapter" / "scores.jsonl").read_bytes()
    assert got == (root / f"{name}-eval-run" / "scores.jsonl").read_bytes() and len(got.splitlines()) == 80
    ran, scored = (json.loads((root / f"{name}-eval-{k}" / "results.json").read_text()) for k in ("run", "adapter"))
    assert scored["models"] == ran["models"] and scored["best_step"] == ran["best_step"]
    assert scored["adapter"] == str(root / f"{name}-adapter") and scored["run"] == str(root / name)


def test_adapter_folders_hold_safetensors_and_json_only(runs):
    root, world = runs
    ds = world.ds
    extra = {"tallrec": {"peft/adapter_config.json", "peft/adapter_model.safetensors"},
             "binllm": {"binary_codes.npz"}, "collm": {"frozen_lora.safetensors"}}
    for name in RUNS:
        folder = root / f"{name}-adapter"
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == {"adapter.json", "config.json", "adapter.safetensors"} | extra.get(name, set()), name
        manifest = json.loads((folder / "adapter.json").read_text())
        assert manifest["data"] | {"trained_with": None} == {"trained_with": None, "user_num": ds.user_num,
                                                             "item_num": ds.item_num}
        assert manifest["llm"]["format"] == "hf" and {"model.safetensors", "config.json", "tokenizer.json"} <= set(
            manifest["llm"]["files"])
        assert (manifest["cf"] is None) == (name == "tallrec")
        assert json.loads((folder / "config.json").read_text()) == json.loads((root / name / "config.json").read_text())
    assert set(load_file(str(root / "tallrec-adapter" / "adapter.safetensors"))) == {
        "lora.a.q_proj", "lora.a.v_proj", "lora.b.q_proj", "lora.b.v_proj", "loss_offset"}
    assert set(load_file(str(root / "collm-adapter" / "frozen_lora.safetensors"))) == {
        "a.q_proj", "a.v_proj", "b.q_proj", "b.v_proj"}
    cora = load_file(str(root / "cora-adapter" / "adapter.safetensors"))
    assert "p.q_proj" in cora and "generator.blocks.0.self_attn.query.kernel" in cora
    with np.load(root / "binllm-adapter" / "binary_codes.npz", allow_pickle=False) as z:
        assert z["user"].shape[0] == ds.user_num and z["item"].shape[0] == ds.item_num


def test_other_inputs_are_refused_in_one_line(runs, capsys):
    root, world = runs
    ds = world.ds
    cora, tallrec = ["--adapter", str(root / "cora-adapter"), *FLAGS], ["--adapter", str(root / "tallrec-adapter"), *FLAGS]
    other_llm = tiny_llm_dir(root / "llm-other", world.texts, seed=1)  # the same tokenizer, other weights
    line = error_line(capsys, main, [*tallrec, "--llm", str(other_llm)])
    assert f"the LLM is not the one the adapter was trained with (--llm {other_llm}): model.safetensors differs (sha256 " \
           in line and f"give --llm the LLM it was trained with ({world.llm})" in line
    (root / "other.gguf").write_bytes(b"GGUF")
    assert "it is a .gguf file, the adapter's LLM was an HF model folder" in error_line(
        capsys, main, [*tallrec, "--llm", str(root / "other.gguf")])
    assert f"no such file or folder (--llm {root / 'nowhere'}): give --llm the LLM the adapter was trained with" in error_line(
        capsys, main, [*tallrec, "--llm", str(root / "nowhere")])

    test = ds["test"]
    uid = test.uid.copy()
    uid[-1] = ds.user_num + 6
    wider = write_dataset(dataclasses.replace(ds, root=None, user_num=ds.user_num + 7,
                                              splits={**ds.splits, "test": dataclasses.replace(test, uid=uid)}),
                          root / "data-wider")
    assert (f"the data's id space is {ds.user_num + 7} users x {ds.item_num} items, the adapter was trained on "
            f"{ds.user_num} x {ds.item_num} (--data {wider})") in error_line(capsys, main, [*cora, "--data", str(wider)])

    train_cf(CFTrainConfig(dim=8, max_epochs=1, seed=1, progress=False), str(world.data), root / "cf-seed1")
    train_cf(CFTrainConfig(dim=16, max_epochs=1, progress=False), str(world.data), root / "cf-dim16")
    line = error_line(capsys, main, [*cora, "--cf", str(root / "cf-seed1")])
    assert f"the CF checkpoint is not the one the adapter was trained with (--cf {root / 'cf-seed1'}): its arrays " \
           f"differ (sha256 " in line and f"give --cf the one it was trained with ({world.cf})" in line
    assert "its dim is 16, the adapter's 8" in error_line(capsys, main, [*cora, "--cf", str(root / "cf-dim16")])

    assert f"not an adapter folder (--adapter {root / 'nowhere'}: no such folder)" in error_line(
        capsys, main, ["--adapter", str(root / "nowhere")])
    assert "exactly one of --run DIR, --adapter DIR or --zero-shot" in error_line(
        capsys, main, ["--run", str(root / "tallrec"), "--adapter", str(root / "tallrec-adapter")])
    assert f"--out {root / 'cora-adapter'} exists and is not an empty folder" in error_line(
        capsys, main, ["export", "--run", str(root / "cora"), "--out", str(root / "cora-adapter")])

    broken = root / "tallrec-broken"
    shutil.copytree(root / "tallrec-adapter", broken)
    params = load_file(str(broken / "adapter.safetensors"))
    del params["loss_offset"]
    save_file(params, str(broken / "adapter.safetensors"))
    assert f"{broken / 'adapter.safetensors'} does not fit the model of its config.json: loss_offset is missing" in error_line(
        capsys, main, ["--adapter", str(broken), *FLAGS])
    (broken / "adapter.safetensors").write_bytes(b"not safetensors")
    assert f"{broken / 'adapter.safetensors'}: not a readable safetensors file" in error_line(
        capsys, main, ["--adapter", str(broken), *FLAGS])
    no_codes = root / "binllm-no-codes"
    shutil.copytree(root / "binllm-adapter", no_codes)
    (no_codes / "binary_codes.npz").unlink()
    assert f"{no_codes / 'binary_codes.npz'} is missing" in error_line(capsys, main, ["--adapter", str(no_codes), *FLAGS])
    assert not (no_codes / "binary_codes.npz").exists()  # refused before anything could write new codes


def test_tallrec_peft_layout_loads_into_peft_with_the_same_scores(runs):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    root, world = runs
    ds = world.ds
    folder = root / "tallrec-adapter" / "peft"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["target_modules"]) == (
        8, 16.0, 0.05, ["q_proj", "v_proj"])
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    assert a.shape == (8, 32) and b.shape == (16, 8) and len(tensors) == 2 * 2 * 2  # layers x {q, v} x {A, B}

    main(["--adapter", str(root / "tallrec-adapter"), "--out", str(root / "tallrec-peft-eval"), "--split", "test",
          "--mesh.fsdp", "1", "--no-progress"])
    rows = [json.loads(x) for x in (root / "tallrec-peft-eval" / "scores.jsonl").read_text().splitlines()]
    split = ds["test"]
    assert [(r["uid"], r["iid"]) for r in rows] == list(zip(split.uid.tolist(), split.iid.tolist()))
    ours = np.array([r["score"] for r in rows])

    tok = Tokenizer.from_path(world.llm)
    ids = tok.encode_many(split_prompts(ds, split, PromptConfig(domain=ds.domain, max_titles=3)))
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tok.pad_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):  # left padded, as cora_jax batches: the last position is every row's last token
        input_ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row's positions start at its first real token
    model = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(str(world.llm), dtype=torch.float32),
                                           str(folder)).eval()
    answer = tok.answer_token_id("Yes")
    with torch.no_grad():
        theirs = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1, answer].numpy()
        with model.disable_adapter():
            base = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1, answer].numpy()
    diff = float(np.abs(theirs - ours).max())
    print(f"max |PEFT - cora_jax| over {len(ours)} rows: {diff:.2e}")
    assert diff < 1e-4
    assert np.abs(base - ours).max() > 1e-2  # the LoRA moves the scores far more than the tolerance

"""Evaluation entry point.

    python eval.py --run DIR [--split test] [--limit N [--sample-seed S]] [--out DIR]
        score the run's best checkpoint -> OUT/results.json, results.md, scores.jsonl (OUT default RUN/eval)
    python eval.py --zero-shot [--llm PATH] --data DIR [--cf CF_DIR] [--limit N] [--out DIR]
        score the frozen base LLM on the same prompts (no run needed); --cf adds the CF model's scores
    python eval.py --adapter ADAPTER [--llm PATH] [--cf DIR] [--data DIR] [--split ...] [--limit N] [--out DIR]
        score an exported adapter as --run scores its run (OUT default ADAPTER/eval); the LLM, CF checkpoint
        and data default to those it was trained with, and others are refused (cora_jax/train/adapter.py)
    either with --mesh.data/--mesh.fsdp/--mesh.tensor N (default: FSDP over every device) and, one
    process per host, --mesh.distributed (see cora_jax/train/mesh.py)

    python eval.py report RUN_DIR... --out DIR
        finished results files (CoRA / baselines / zero-shot / demo / CF) -> DIR/report.md, DIR/warm_cold.png
        and, when a method was run with and without titles, DIR/id_only.png (cora_jax/train/report.py); scores nothing;
        the inputs with a metrics.jsonl (run dirs, seed-study folders) -> DIR/curves.png (training loss, valid AUC)
    python eval.py seeds DIR... --out OUT
        runs of one preset with several seeds (results/seed_study.sh) -> OUT/seeds.md, seeds.json, valid_curves.png
    python eval.py recommend --run DIR --user UID [--top K] [--candidates N | --items ID...] [--seed S] [--json]
        rank candidate items for one user with the run's best checkpoint (cora_jax/train/recommend.py)
    python eval.py export --run DIR --out ADAPTER
        the run's best trainable parameters, config and input fingerprints as safetensors + JSON, for --adapter

Subcommands (the first argument) are looked up in SUBCOMMANDS, beside the default scoring command.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from cora_jax.errors import UsageError, entry_point
from cora_jax.train.mesh import MeshConfig


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    run: str | None = None              # run directory of CoRA or a baseline (train.py cora --out)
    adapter: str | None = None          # folder written by `eval.py export`: score it instead of a run
    zero_shot: bool = False             # score the frozen base LLM instead of a run
    llm: str | None = None              # zero-shot: HF dir or .gguf; omitted = embedded SmolLM2-135M (adapter: as trained)
    data: str | None = None             # zero-shot: split folder or "ml100k" (adapter: omitted = as trained)
    cf: str | None = None               # zero-shot: CF run dir whose scores go beside, optional (adapter: as trained)
    split: tuple[str, ...] = ("test", "valid")  # splits to score; test/valid also get their warm and cold views
    limit: int | None = None            # score only the first N rows of each split (file order)
    sample_seed: int | None = None      # with --limit: N rows drawn at random with this seed instead of the first N
    out: str | None = None              # output folder (default RUN/eval, or runs/zero-shot)
    max_titles: int = 10                # zero-shot: history titles in the prompt
    progress: bool = True               # tqdm bars
    mesh: MeshConfig = MeshConfig()     # device mesh for scoring (any shape; not necessarily the training one)


def main_score(argv: list[str]) -> None:
    import jax
    import tyro

    from cora_jax.train.adapter import evaluate_adapter
    from cora_jax.train.evaluate import evaluate_run, evaluate_zero_shot

    a = tyro.cli(EvalArgs, args=argv, prog="eval.py")
    if a.zero_shot + (a.run is not None) + (a.adapter is not None) != 1:
        raise UsageError("nothing to score: give exactly one of --run DIR, --adapter DIR or --zero-shot (with --data DIR)")
    if a.adapter is not None:
        res = evaluate_adapter(a.adapter, a.split, a.limit, a.out, llm=a.llm, cf=a.cf, data=a.data, progress=a.progress,
                               sample_seed=a.sample_seed, mesh=a.mesh)
    elif a.zero_shot:
        if a.data is None:
            raise UsageError("--zero-shot needs --data DIR: give a split folder or 'ml100k'")
        res = evaluate_zero_shot(a.llm, a.data, a.split, a.limit, a.out or "runs/zero-shot", cf=a.cf,
                                 max_titles=a.max_titles, progress=a.progress, sample_seed=a.sample_seed, mesh=a.mesh)
    else:
        res = evaluate_run(a.run, a.split, a.limit, a.out, progress=a.progress, sample_seed=a.sample_seed, mesh=a.mesh)
    if jax.process_index() == 0:  # the process that wrote the files
        print(open(res["results_json"].replace("results.json", "results.md")).read())
        print(res["results_json"])


def main_report(argv: list[str]) -> None:
    from cora_jax.train.report import main as report

    report(argv)


def main_seeds(argv: list[str]) -> None:
    from cora_jax.train.seed_study import main as seeds

    seeds(argv)


def main_recommend(argv: list[str]) -> None:
    from cora_jax.train.recommend import main as recommend

    recommend(argv)


def main_export(argv: list[str]) -> None:
    from cora_jax.train.adapter import main as export

    export(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], None]] = {"report": main_report, "seeds": main_seeds,
                                                        "recommend": main_recommend, "export": main_export}


@entry_point
def main(argv: list[str]) -> None:
    if argv and argv[0] in SUBCOMMANDS:
        SUBCOMMANDS[argv[0]](argv[1:])
    else:
        main_score(argv)


if __name__ == "__main__":
    from cora_jax.runtime import retain_freed_memory

    retain_freed_memory()  # before jax starts its threads
    main()

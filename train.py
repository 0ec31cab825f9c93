"""Training entry point.

    python train.py cora --preset NAME [overrides]    train (or resume) CoRA; e.g. --batch-size 4 --model.rank 8
    python train.py cf train|grid ...                 pretrain a CF backbone (MF / LightGCN / SASRec)
    python train.py demo [--test-rows N]              the README's main job on the embedded defaults
    python train.py presets                           list the presets
"""
from __future__ import annotations

import sys

from cora_jax.errors import UsageError, entry_point


def _pop_preset(argv: list[str]) -> tuple[str, list[str]]:
    rest, name, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
        elif argv[i].startswith("--preset="):
            name, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return name or "cora-mf-ml1m", rest


def main_cora(argv: list[str]) -> dict:
    import tyro

    from configs import get_preset
    from cora_jax.train import TrainConfig, train

    name, rest = _pop_preset(argv)
    preset = get_preset(name)
    cfg = tyro.cli(TrainConfig, default=preset, args=rest, prog=f"train.py cora --preset {name}",
                   description=f"Train CoRA from preset {name!r}; every field below can be overridden.")
    return train(cfg)


@entry_point
def main(argv: list[str]) -> None:
    commands = ("cora", "cf", "demo", "presets")
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not argv:
        sys.exit(__doc__ + f"\nmissing command; expected one of {commands}")
    if argv[0] not in commands:
        raise UsageError(f"unknown command {argv[0]!r}: use one of {', '.join(commands)} (python train.py shows the usage)")
    cmd, rest = argv[0], argv[1:]
    if cmd == "cora":
        import json

        print(json.dumps(main_cora(rest)))
    elif cmd == "cf":
        from cora_jax.cf import main_cf

        main_cf(rest)
    elif cmd == "demo":
        import tyro

        from cora_jax.train.demo import DemoConfig, run_demo

        run_demo(tyro.cli(DemoConfig, args=rest, prog="train.py demo"))
    else:
        from configs import PRESETS

        for name, cfg in PRESETS.items():
            m = cfg.method
            r, targets = (cfg.model.rank, cfg.model.targets) if m.kind == "cora" else (m.lora.rank, m.lora.targets)
            print(f"{name:28s} method={m.kind} data={cfg.data} cf={cfg.cf} r={r} targets={targets} "
                  f"titles={cfg.with_titles} bs={cfg.batch_size} lr={cfg.optim.lr} eval_every={cfg.eval_every} "
                  f"patience={cfg.patience} budget={cfg.max_wall_minutes or '-'} min")


if __name__ == "__main__":
    from cora_jax.runtime import retain_freed_memory

    retain_freed_memory()  # before jax starts its threads
    main()

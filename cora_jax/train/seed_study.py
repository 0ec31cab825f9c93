"""`eval.py seeds DIR... --out OUT`: one preset trained with several seeds (and optionally a second setting, such
as the batch order), every run scored on the same test rows -> OUT/seeds.md, OUT/seeds.json, OUT/valid_curves.png.

Each DIR holds what results/seed_study.sh keeps of a run: its training's config.json and metrics.jsonl, and its
evaluation's results.json and scores.jsonl(.gz). Runs are grouped by their config less `seed` and `out`; a group
is named by the fields in which the groups differ (e.g. `bucket_train=False`). Per run: the valid curve, the best
step, test AUC / UAUC and the CF model's AUC on the same rows; per group: mean and standard deviation over seeds;
between groups, seed by seed: DeLong's paired test of the test-AUC difference.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from cora_jax.run_files import ReportError
from cora_jax.train.curves import read_curve
from cora_jax.train.paired_test import compare_paired, scored_test_rows
from cora_jax.train.report_records import load_results

NEEDED = ("config.json", "metrics.jsonl", "results.json")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run(folder: str) -> dict:
    path = pathlib.Path(folder)
    if missing := [n for n in NEEDED if not (path / n).is_file()]:
        raise ReportError(f"{folder}: no {missing[0]}; expected a folder with {', '.join(NEEDED)} and scores.jsonl(.gz) "
                          "(what results/seed_study.sh keeps of a run)")
    try:
        config = _flat(json.loads((path / "config.json").read_text()))
    except ValueError as e:
        raise ReportError(f"{folder}/config.json: not JSON ({e})") from e
    records = load_results([str(path / "results.json")])
    cf = [r for r in records if r["role"] == "cf"]
    read = read_curve(path / "metrics.jsonl")  # the one reader of eval events (a re-evaluated step: the last wins)
    curve = list(zip(read["step"], read["valid_auc"]))
    if not curve:
        raise ReportError(f"{folder}/metrics.jsonl: no evaluation event; did the training run finish?")
    return {"folder": folder, "seed": config.get("seed"), "config": config, "curve": curve, "model": records[0],
            "cf": cf[0] if cf else None}


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by setting, named by the config fields (less seed and out) in which the settings differ."""
    keys = sorted(set().union(*(r["config"] for r in runs)) - {"seed", "out"})
    varying = [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]
    groups: dict[str, list[dict]] = {}
    for r in runs:
        name = ", ".join(f"{k}={r['config'].get(k)}" for k in varying) or "all runs"
        groups.setdefault(name, []).append(r)
    for name, members in groups.items():
        seeds = [r["seed"] for r in members]
        if len(set(seeds)) < len(seeds):
            raise ReportError(f"setting {name}: seed {max(seeds, key=seeds.count)} occurs twice "
                              f"({', '.join(r['folder'] for r in members)})")
    return groups


def _auc(record: dict | None, split: str = "test", key: str = "auc") -> float | None:
    return None if record is None else (record["splits"].get(split) or {}).get(key)


def summarize(runs: list[dict]) -> dict:
    groups = group_runs(runs)
    cache: dict = {}
    scores = {r["folder"]: scored_test_rows(r["model"], cache) for r in runs}
    for r in runs:
        if isinstance(scores[r["folder"]], str):
            raise ReportError(f"{r['folder']}: {scores[r['folder']]}")
    out = {"settings": [], "paired": []}
    for name, members in groups.items():
        rows = []
        for r in sorted(members, key=lambda r: r["seed"]):
            best_step, best_auc = max(r["curve"], key=lambda sa: (sa[1], -sa[0]))  # the first step of the best AUC
            test, cf = _auc(r["model"]), _auc(r["cf"])
            rows.append({"seed": r["seed"], "folder": r["folder"], "valid_curve": r["curve"], "best_step": best_step,
                         "best_valid_auc": best_auc, "test_auc": test, "test_uauc": _auc(r["model"], key="uauc"),
                         "test_rows": (r["model"]["splits"].get("test") or {}).get("rows"), "cf_test_auc": cf,
                         "above_cf": None if cf is None else test > cf})
        aucs = [x["test_auc"] for x in rows]
        out["settings"].append({"setting": name, "runs": rows, "test_auc_mean": statistics.fmean(aucs),
                                "test_auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None,
                                "seeds_above_cf": sum(bool(x["above_cf"]) for x in rows)})
    names = list(groups)
    for other in names[1:]:  # every other setting against the first, on the seeds both ran
        by_seed = {r["seed"]: r for r in groups[names[0]]}
        for r in sorted(groups[other], key=lambda r: r["seed"]):
            if (ref := by_seed.get(r["seed"])) is not None:
                t = compare_paired(r["model"], scores[r["folder"]], ref["model"], scores[ref["folder"]])
                out["paired"].append({"setting": other, "reference": names[0], "seed": r["seed"], **t})
    return out


def _f(x, fmt: str = ".4f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(summary: dict) -> str:
    lines = ["# Seed study", "",
             "| setting | seed | valid AUC by step | best step | test AUC | test UAUC | CF AUC, same rows | above CF |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        for x in s["runs"]:
            curve = " ".join(f"{a:.3f}@{step}" for step, a in x["valid_curve"])
            lines.append(f"| {s['setting']} | {x['seed']} | {curve} | {x['best_step']} | {_f(x['test_auc'])} | "
                         f"{_f(x['test_uauc'])} | {_f(x['cf_test_auc'])} | {'–' if x['above_cf'] is None else 'yes' if x['above_cf'] else 'no'} |")
    lines += ["", "| setting | seeds | test AUC mean | sd | min | max | seeds above CF |", "|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        aucs = [x["test_auc"] for x in s["runs"]]
        lines.append(f"| {s['setting']} | {len(aucs)} | {s['test_auc_mean']:.4f} | {_f(s['test_auc_sd'])} | "
                     f"{min(aucs):.4f} | {max(aucs):.4f} | {s['seeds_above_cf']} of {len(aucs)} |")
    if summary["paired"]:
        lines += ["", "Paired on the same test rows, seed by seed (DeLong's test; ΔAUC = setting − reference):", "",
                  "| setting | reference | seed | rows | ΔAUC | 95% CI | p |", "|---|---|---|---|---|---|---|"]
        for p in summary["paired"]:
            lines.append(f"| {p['setting']} | {p['reference']} | {p['seed']} | {p['rows']} | {p['delta_auc']:+.4f} | "
                         f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] | {p['p']:.3g} |")
    return "\n".join(lines) + "\n"


def plot_curves(summary: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, s in enumerate(summary["settings"]):
        for j, x in enumerate(s["runs"]):
            steps, aucs = zip(*x["valid_curve"])
            ax.plot(steps, aucs, color=f"C{k}", linestyle=("-", "--", ":", "-.")[j % 4], marker="o",
                    label=f"{s['setting']}, seed {x['seed']}")
    ax.set_xlabel("training step")
    ax.set_ylabel("valid AUC (early-stopping rows)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="eval.py seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="DIR", help="a run's kept files: " + ", ".join(NEEDED) + ", scores")
    ap.add_argument("--out", required=True, help="output folder (created): seeds.md, seeds.json, valid_curves.png")
    a = ap.parse_args(argv)
    summary = summarize([load_run(d) for d in a.runs])
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.md").write_text(markdown(summary))
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(summary, out / "valid_curves.png")
    print(out / "seeds.md")

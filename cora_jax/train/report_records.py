"""Results files -> report records: one per (input, model), named and labelled as the report shows them."""
from __future__ import annotations

import collections
import json
import pathlib

from cora_jax.run_files import SCORES, ReportError
from cora_jax.train.results import read_models

EXPECTED = ("a CoRA run dir (with eval/results.json), an eval / zero-shot / demo output dir or a CF run dir "
            "(with results.json), or a results.json file")


def _results_path(arg: str) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(results.json, the CoRA run dir whose config.json names the targets, if known)."""
    p = pathlib.Path(arg)
    if p.is_file():
        return p, None
    if (p / "eval" / "results.json").is_file():
        return p / "eval" / "results.json", p
    if (p / "results.json").is_file():  # a config.json beside it (as under results/) is its run's
        return p / "results.json", p if (p / "config.json").is_file() else None
    raise ReportError(f"{arg}: expected {EXPECTED}" + (" (a CoRA run needs `eval.py --run` first)"
                                                      if (p / "config.json").is_file() else ""))


def _cora_targets(run_dir: pathlib.Path | None) -> str | None:
    """The run's `model.targets`, or None without a config or when the run trained a baseline (whose
    config still carries the unused CoRA defaults)."""
    cfg = run_dir / "config.json" if run_dir else None
    if not (cfg and cfg.is_file()):
        return None
    c = json.loads(cfg.read_text())
    return c["model"]["targets"] if c.get("method", {}).get("kind", "cora") == "cora" else None


def load_results(paths: list[str]) -> list[dict]:
    """One record per (input, model): method (the paper's name), role and with_titles (as ModelResult has them),
    source (the results file), run (its folder's shortest distinct name), label (method, "(ID-only)" when so, plus
    [run] when two share it), data, llm, targets (the run's own model of CoRA runs with a known config; Table 4 takes
    those with text), splits {name: metrics}, name (the model's name in results files), scores_tag (its rows' tag
    in scores.jsonl, or None) and scores (the scores.jsonl beside the file, or None)."""
    records = []
    for arg in paths:
        path, run_dir = _results_path(arg)
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"{arg}: cannot read {path} as JSON ({e}); expected {EXPECTED}") from e
        if not isinstance(res, dict) or ("models" not in res and "model" not in res):
            raise ReportError(f"{arg}: {path} has neither 'models' (CoRA / zero-shot / demo) nor 'model' (CF); "
                              f"expected {EXPECTED}")
        # the dataset's folder name: the same data read from two places is one dataset, and no host path shows
        data = pathlib.PurePath(res["data"]).name if res.get("data") else res.get("preset") or "–"
        base = {"source": str(path), "data": data}
        scores = next((str(f) for f in (path.parent / SCORES, path.parent / f"{SCORES}.gz") if f.is_file()), None)
        run = run_dir or (pathlib.Path(res["run"]) if res.get("run") else None)
        targets = _cora_targets(run) if "models" in res else None  # a CF run's config is none of CoRA's
        for m in read_models(res, str(path)):
            records.append({**base, "method": m.method, "role": m.role, "with_titles": m.with_titles,
                            "llm": "–" if m.role == "cf" else res.get("llm", "–"), "splits": m.splits,
                            "targets": targets if m.role == "method" else None, "name": m.name,
                            "scores_tag": m.scores_tag, "scores": scores})
    records = _without_repeated_cf_rows(records)
    run_names = short_run_names([r["source"] for r in records])
    for r in records:
        r["run"] = run_names[r["source"]]
        r["label"] = r["method"] if r["with_titles"] else f"{r['method']} (ID-only)"
    counts = collections.Counter(r["label"] for r in records)
    for r in records:
        if counts[r["label"]] > 1:
            r["label"] = f"{r['label']} [{r['run']}]"
    return records


def _without_repeated_cf_rows(records: list[dict]) -> list[dict]:
    """A CF model scored beside several runs on the same test rows repeats one row, which a CF run of its own
    among the inputs also gives: keep one, the CF run's where there is one (it has per-row scores)."""
    def key(r: dict) -> tuple:
        return r["method"], r["data"], json.dumps(r["splits"].get("test"), sort_keys=True)
    keep: dict[tuple, dict] = {}
    for r in records:
        if key(r) not in keep or (keep[key(r)]["role"] == "cf" and r["role"] != "cf"):
            keep[key(r)] = r
    return [r for r in records if r["role"] != "cf" or keep[key(r)] is r]


def short_run_names(sources: list[str]) -> dict[str, str]:
    """Each results file's folder, named by as few trailing path parts as set it apart from the other folders.
    A run's own `eval/` folder counts as the run, and another eval* folder keeps its parent (the run) in its
    name: runs/a/eval beside runs/a/eval-full -> "a", "a/eval-full"; x/b beside y/b -> "x/b", "y/b"."""
    folders = {s: pathlib.PurePath(s).parent for s in sources}
    folders = {s: f.parent if f.name == "eval" else f for s, f in folders.items()}
    distinct = set(folders.values())

    def name(f: pathlib.PurePath) -> str:
        for k in range(2 if f.name.startswith("eval") else 1, len(f.parts) + 1):
            suffix = f.parts[-k:]
            if all(g.parts[-k:] != suffix for g in distinct - {f}):
                return "/".join(suffix)
        return str(f)
    return {s: name(f) for s, f in folders.items()}


def auc_on_test(r: dict) -> float | None:
    return (r["splits"].get("test") or {}).get("auc")


def pair_key(r: dict) -> tuple:
    return r["method"], r["targets"], r["data"], r["llm"]


def id_only_pairs(records: list[dict]) -> list[tuple[dict, dict]]:
    """(with text, ID-only) record pairs of one method (CoRA: and `targets`) on the same data and LLM, the paper's
    Fig. 6 comparison; every combination when a form occurs more than once."""
    groups = collections.defaultdict(lambda: ([], []))
    for r in records:
        groups[pair_key(r)][0 if r["with_titles"] else 1].append(r)
    return [(t, i) for text, ids in groups.values() for t in text for i in ids]


def method_with_targets(r: dict) -> str:
    """The method and, for CoRA runs, its `targets`: the rows of the Fig. 6 table and figure."""
    return f"{r['method']} ({r['targets']})" if r["targets"] else r["method"]

"""DeLong's paired test of report records against a reference, on the test rows both scored in scores.jsonl."""
from __future__ import annotations

import numpy as np

from cora_jax.metrics import delong_paired
from cora_jax.run_files import SCORES, ReportError, read_scores

DEFAULT_VERSUS = "CoRA-MF"


def _row_keys(uid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    keys = np.empty(len(uid), dtype=[("uid", np.int64), ("iid", np.int64)])
    keys["uid"], keys["iid"] = uid, iid
    return keys


def scored_test_rows(r: dict, cache: dict[str, list[dict]]) -> dict[str, np.ndarray] | str:
    """The record's test rows in its scores.jsonl as arrays uid, iid, label, score and key (uid, iid), or why it
    has none. Its rows are those tagged with its scores_tag; cache: path -> rows, so each file is read once."""
    if r["scores"] is None:
        return f"no {SCORES} beside the results file"
    if r["scores"] not in cache:
        cache[r["scores"]] = read_scores(r["scores"])
    test = [x for x in cache[r["scores"]] if x["split"] == "test"]
    tag = r["scores_tag"]
    if tag is None or all(x["model"] != tag for x in test):
        return f"{SCORES} has no test rows of {r['name']}"
    rows = [x for x in test if x["model"] == tag]
    cols = {}
    for field, dtype in (("uid", np.int64), ("iid", np.int64), ("label", np.int64), ("score", np.float64)):
        try:
            cols[field] = np.array([x[field] for x in rows], dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ReportError(f"{r['scores']}: field '{field}' of {tag}'s test rows is not a number ({e})") from e
    if not np.isin(cols["label"], (0, 1)).all():
        raise ReportError(f"{r['scores']}: field 'label' of {tag}'s test rows is not 0 / 1")
    if not np.isfinite(cols["score"]).all():
        raise ReportError(f"{r['scores']}: field 'score' of {tag}'s test rows is not a finite number")
    cols["key"] = _row_keys(cols["uid"], cols["iid"])
    ordered = np.sort(cols["key"])
    if len(twice := ordered[1:][ordered[1:] == ordered[:-1]]):
        raise ReportError(f"{r['scores']}: {tag} scored the test row uid {twice[0]['uid']}, iid {twice[0]['iid']} "
                          "more than once")
    return cols


def compare_paired(r: dict, s: dict[str, np.ndarray], ref: dict, s_ref: dict[str, np.ndarray]) -> dict:
    """DeLong's test of record r against the reference on the test rows both scored, matched by (uid, iid)."""
    _, i, j = np.intersect1d(s["key"], s_ref["key"], assume_unique=True, return_indices=True)
    if not len(i):
        raise ReportError(f"{r['label']} ({r['scores']}) and the reference {ref['label']} ({ref['scores']}) scored "
                          "no test row in common (rows matched by uid, iid)")
    if len(bad := np.flatnonzero(s["label"][i] != s_ref["label"][j])):
        k = i[bad[0]]
        raise ReportError(f"{r['scores']} and {ref['scores']}: field 'label' differs on {len(bad)} of the {len(i)} "
                          f"test rows both scored (first: uid {s['uid'][k]}, iid {s['iid'][k]})")
    t = delong_paired(s["label"][i], s["score"][i], s_ref["score"][j])
    return {"rows": len(i), "rows_method": len(s["key"]), "rows_reference": len(s_ref["key"]),
            "positives": t.positives, "negatives": t.negatives, "auc": t.auc, "auc_reference": t.auc_reference,
            "delta_auc": t.delta, "se": t.se, "ci95": [t.ci_low, t.ci_high], "p": t.p}


def paired_vs_reference(records: list[dict], versus: str = DEFAULT_VERSUS, explicit: bool = False) -> dict:
    """Every other record against the reference: the first input labelled `versus` or else the first with-text
    one of method `versus`, preferring one with per-row test scores. Returns {versus, explicit, reference (a
    record or None), note (why nothing or what was chosen; may be ""), rows [(record, compare_paired dict or why
    there is none)]}. With explicit (--versus given), a reference that is missing or has no scores is an error."""
    cache: dict[str, list[dict]] = {}
    scores = [scored_test_rows(r, cache) for r in records]
    named = [k for k, r in enumerate(records) if r["label"] == versus] or [
        k for k, r in enumerate(records) if r["method"] == versus and r["with_titles"]]
    scored = [k for k in named if not isinstance(scores[k], str)]
    out = {"versus": versus, "explicit": explicit, "reference": None, "note": "", "rows": []}
    if not scored:
        why = (f"no input is labelled or named {versus} (labels: {', '.join(r['label'] for r in records)})"
               if not named else f"{records[named[0]]['label']} has no per-row test scores "
                                 f"({scores[named[0]]}; `{records[named[0]]['source']}`)")
        if explicit:
            raise ReportError(f"--versus {versus}: {why}")
        return {**out, "note": f"No paired comparison: {why}. Name a reference with `--versus NAME`."}
    ref = scored[0]
    if len(named) > 1:
        out["note"] = (f"{len(named)} inputs match `{versus}` ({', '.join(records[k]['label'] for k in named)}); the "
                       "reference is the first with per-row test scores. Name another with `--versus 'LABEL'`.")
    rows = [(r, s if isinstance(s, str) else compare_paired(r, s, records[ref], scores[ref]))
            for k, (r, s) in enumerate(zip(records, scores)) if k != ref]
    return {**out, "reference": records[ref], "rows": rows}

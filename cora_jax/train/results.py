"""The scored models of a results.json as typed records, and the names results files and reports show them by."""
from __future__ import annotations

import dataclasses
from typing import Literal

from cora_jax.run_files import ReportError

CF_NAMES = {"mf": "MF", "lightgcn": "LightGCN", "sasrec": "SASRec"}
_CF_SUFFIX = {"mf": "MF", "lightgcn": "LGCN", "sasrec": "SAS"}
_METHOD_NAMES = {"tallrec": "TALLRec", "prompt4nr": "Prompt4NR", "personprompt": "PersonPrompt", "binllm": "BinLLM"}
ZERO_SHOT = "ICL"  # the paper's name of the frozen base LLM prompted as-is
# "method": what the run trained (a CF run: its CF model); "cf": the run's CF model scored on the same rows;
# "zero-shot": the frozen base LLM
Role = Literal["method", "cf", "zero-shot"]
FIELDS = ("method", "role", "with_titles", "limit", "scores_tag")  # a results.json model entry's, beside its splits


def paper_name(kind: str, cf_kind: str | None) -> str:
    """The paper's name of a method kind (`method.kind`) on a CF backbone: CoRA-MF, CoLLM-LGCN, TALLRec, ..."""
    if kind in ("cora", "collm"):
        return f"{'CoRA' if kind == 'cora' else 'CoLLM'}-{_CF_SUFFIX.get(cf_kind, cf_kind)}"
    return _METHOD_NAMES[kind]


def display_name(method: str, role: Role, with_titles: bool) -> str:
    """A model's name in results.json's "models" and results.md (and, for a run's own model, in scores.jsonl)."""
    if role == "cf":
        return f"{method} (CF, same rows)"
    if role == "zero-shot":
        return f"{method} (zero-shot base LLM)"
    return method if with_titles else f"{method} (ID-only)"


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """One scored model of a results file."""
    method: str               # the paper's name: CoRA-MF, TALLRec, ICL, MF, ...
    role: Role
    with_titles: bool         # False only for a prompt of item IDs alone; a model that reads no prompt counts as True
    limit: int | None         # rows scored of each split; None: all of them
    splits: dict[str, dict]   # split name -> metrics (auc, uauc, rows, ...)
    scores_tag: str | None    # the `model` field of its rows in scores.jsonl; None: it has no rows there

    @property
    def name(self) -> str:
        return display_name(self.method, self.role, self.with_titles)

    def to_json(self) -> dict:
        """Its results.json entry: the fields beside the splits, so that `models[name][split]` reads as it did."""
        return {**{f: getattr(self, f) for f in FIELDS}, **self.splits}

    @classmethod
    def from_json(cls, entry: dict) -> ModelResult:
        return cls(**{f: entry[f] for f in FIELDS}, splits={k: v for k, v in entry.items() if k not in FIELDS})


def models_json(models: list[ModelResult]) -> dict[str, dict]:
    """results.json's "models": each entry under its display name."""
    return {m.name: m.to_json() for m in models}


def _names_before_fields() -> dict[str, tuple[str, Role, bool]]:
    """(method, role, with_titles) by every name eval.py gave a model before its entry carried FIELDS."""
    methods = [paper_name(k, c) for k in ("cora", "collm") for c in CF_NAMES] + [paper_name(k, None) for k in _METHOD_NAMES]
    known = [(m, "method", t) for m in methods for t in (True, False)]
    known += [(m, "cf", True) for m in CF_NAMES.values()] + [(ZERO_SHOT, "zero-shot", True)]
    return {display_name(*k): k for k in known}


def read_models(res: dict, source: str) -> list[ModelResult]:
    """The models of a results.json (source: its path, for errors): a CF run's own (splits at the top level), or
    each entry of "models", from its FIELDS or, written before them, from the name eval.py gave it."""
    if "models" not in res:
        splits = {k: v for k, v in res.items() if isinstance(v, dict) and "auc" in v}
        return [ModelResult(CF_NAMES.get(res["model"], res["model"]), "method", True, None, splits, res["model"])]
    known = _names_before_fields()
    models = []
    for i, (name, entry) in enumerate(res["models"].items()):
        if "role" in entry:
            models.append(ModelResult.from_json(entry))
            continue
        if name not in known:
            raise ReportError(f"{source}: model '{name}' has no 'role' field, and eval.py never named a model so")
        method, role, with_titles = known[name]
        # The file's flag is the prompt of its first model (the run's method); the CF model reads no prompt.
        with_titles = with_titles and not (i == 0 and res.get("with_titles") is False)
        # scores.jsonl tagged a run's rows with this name, zero-shot's with "ICL", and held none of the CF model's
        tag = {"method": name, "zero-shot": method}.get(role)
        models.append(ModelResult(method, role, with_titles, res.get("limit"), entry, tag))
    return models

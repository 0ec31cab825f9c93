"""The reference prompt (docs/reference.md#prompt), its quirks on by default, each behind a field, and
the CoLLM prompt the input-space baselines use (docs/reference.md#llm-baselines): the same question with a
user and an item feature slot, `USER_SLOT` / `ITEM_SLOT`, which those methods fill with input
embeddings (cora_jax.llm.Tokenizer.encode_with_slots) or, for BinLLM, with text.

with_titles=False gives the ID-only variants of the paper's Fig. 6: no history or target title;
what the model knows of the user and the item then comes only from its IDs (slots, weights).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

from cora_jax.data.split import Dataset, Split

# plural / singular noun of the template per domain
_NOUNS = {"movie": ("movies", "movie"), "book": ("books", "book")}
USER_SLOT, ITEM_SLOT = "<UserID>", "<TargetItemID>"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    domain: Literal["movie", "book"] = "movie"  # wording: "movies"/"movie" or "books"/"book"
    max_titles: int = 10  # at most this many most recent history titles (oldest first)
    literal_backslash_n: bool = True  # quirk: "\n" before "#Answer:" is a backslash and an n, not a newline
    empty_history_word: str = "unkow"  # quirk (sic): the title list when the history is empty
    drop_empty_titles: bool = True  # history titles that are "" are left out (before taking the last max_titles)
    strip_target: bool = True  # the target title is stripped of surrounding spaces
    template: Literal["cora", "collm"] = "cora"  # "collm": the question gains USER_SLOT and ITEM_SLOT
    with_titles: bool = True  # False: the ID-only prompt (no history list, no target title)


def render_prompt(history_titles: Sequence[str], target_title: str, cfg: PromptConfig = PromptConfig(),
                  user_feature: str = USER_SLOT, item_feature: str = ITEM_SLOT) -> str:
    """history_titles: the history's titles oldest first, without the padding entry.
    user_feature / item_feature: what fills the CoLLM template's slots (the slot markers by default)."""
    plural, singular = _NOUNS[cfg.domain]
    titles = [t for t in history_titles if t] if cfg.drop_empty_titles else list(history_titles)
    titles = titles[-cfg.max_titles :] if cfg.max_titles > 0 else []
    title_list = ", ".join(f'"{t}"' for t in titles) if titles else cfg.empty_history_word
    target = target_title.strip(" ") if cfg.strip_target else target_title
    newline = "\\n" if cfg.literal_backslash_n else "\n"
    answer = f'Answer with "Yes" or "No". {newline}#Answer:'
    if cfg.template == "cora" and cfg.with_titles:
        return (f"#Question: A user has given high ratings to the following {plural}: {title_list}. "
                f"Leverage the information to predict whether the user would enjoy the {singular} titled "
                f'"{target}"? {answer}')
    if cfg.template == "cora":
        return f"#Question: Predict whether the user would enjoy the {singular}? {answer}"
    if cfg.with_titles:  # CoLLM's template, word for word
        return (f"#Question: A user has given high ratings to the following {plural}: {title_list}. "
                f"Additionally, we have information about the user's preferences encoded in the feature {user_feature}. "
                f"Using all available information, make a prediction about whether the user would enjoy the {singular} "
                f'titled "{target}" with the feature {item_feature}? {answer}')
    return (f"#Question: We have information about the user's preferences encoded in the feature {user_feature}. "
            f"Make a prediction about whether the user would enjoy the {singular} with the feature {item_feature}? {answer}")


def split_prompts(ds: Dataset, split: Split, cfg: PromptConfig | None = None,
                  features: Callable[[int, int], tuple[str, str]] | None = None) -> list[str]:
    """One prompt per row of `split`; cfg=None uses PromptConfig(domain=ds.domain).
    features: (uid, iid) -> the text of the user and item slots (BinLLM's codes); None keeps the markers."""
    cfg = PromptConfig(domain=ds.domain) if cfg is None else cfg
    titles = ds.item_titles
    off = split.his_offsets
    out = []
    for j, (uid, iid) in enumerate(zip(split.uid.tolist(), split.iid.tolist())):
        his = split.his_values[off[j] + 1 : off[j + 1]]  # skip the padding 0
        slots = (USER_SLOT, ITEM_SLOT) if features is None else features(uid, iid)
        out.append(render_prompt(titles[his].tolist(), titles[iid], cfg, *slots))
    return out

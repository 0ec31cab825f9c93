"""The reference prompt (cora-reference.md §3), its quirks on by default, each behind a field."""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

from cora_jax.data.split import Dataset, Split

# plural / singular noun of the template per domain
_NOUNS = {"movie": ("movies", "movie"), "book": ("books", "book")}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    domain: Literal["movie", "book"] = "movie"  # wording: "movies"/"movie" or "books"/"book"
    max_titles: int = 10  # at most this many most recent history titles (oldest first)
    literal_backslash_n: bool = True  # quirk: "\n" before "#Answer:" is a backslash and an n, not a newline
    empty_history_word: str = "unkow"  # quirk (sic): the title list when the history is empty
    drop_empty_titles: bool = True  # history titles that are "" are left out (before taking the last max_titles)
    strip_target: bool = True  # the target title is stripped of surrounding spaces


def render_prompt(history_titles: Sequence[str], target_title: str, cfg: PromptConfig = PromptConfig()) -> str:
    """history_titles: the history's titles oldest first, without the padding entry."""
    plural, singular = _NOUNS[cfg.domain]
    titles = [t for t in history_titles if t] if cfg.drop_empty_titles else list(history_titles)
    titles = titles[-cfg.max_titles :] if cfg.max_titles > 0 else []
    title_list = ", ".join(f'"{t}"' for t in titles) if titles else cfg.empty_history_word
    target = target_title.strip(" ") if cfg.strip_target else target_title
    newline = "\\n" if cfg.literal_backslash_n else "\n"
    return (f"#Question: A user has given high ratings to the following {plural}: {title_list}. "
            f"Leverage the information to predict whether the user would enjoy the {singular} titled "
            f'"{target}"? Answer with "Yes" or "No". {newline}#Answer:')


def split_prompts(ds: Dataset, split: Split, cfg: PromptConfig | None = None) -> list[str]:
    """One prompt per row of `split`; cfg=None uses PromptConfig(domain=ds.domain)."""
    cfg = PromptConfig(domain=ds.domain) if cfg is None else cfg
    titles = ds.item_titles
    off = split.his_offsets
    out = []
    for j, iid in enumerate(split.iid.tolist()):
        his = split.his_values[off[j] + 1 : off[j + 1]]  # skip the padding 0
        out.append(render_prompt(titles[his].tolist(), titles[iid], cfg))
    return out

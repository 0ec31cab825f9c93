"""Golden prompts on real rows of the shared ML-1M split, and each quirk's switch."""
import functools

import pytest

from cora_jax.data import PromptConfig, load_dataset, render_prompt, split_prompts

Q = '#Question: A user has given high ratings to the following movies: '
TAIL = 'Answer with "Yes" or "No". \\n#Answer:'


@functools.lru_cache(maxsize=1)
def _shared(path):
    return load_dataset(path)


def test_reference_example(ml1m_dir):
    """The example prompt of docs/reference.md#prompt is train row 1."""
    ds = _shared(ml1m_dir)
    train = ds["train"]
    assert train.row[1] == 1
    want = ('#Question: A user has given high ratings to the following movies: "Shawshank Redemption, The (1994)". '
            'Leverage the information to predict whether the user would enjoy the movie titled "Sting, The (1973)"? '
            'Answer with "Yes" or "No". \\n#Answer:')
    assert split_prompts(ds, train.take([1]))[0] == want
    assert "\n" not in want and want.endswith("\\n#Answer:")


def test_last_ten_titles_oldest_first(ml1m_dir):
    ds = _shared(ml1m_dir)
    test = ds["test"]
    assert test.row[0] == 97 and len(test.history(0)) == 53  # 52 real history items, only the last 10 shown
    want = (Q + '"When We Were Kings (1996)", "Celluloid Closet, The (1995)", "War Room, The (1993)", '
            '"U2: Rattle and Hum (1988)", "Madonna: Truth or Dare (1991)", "Breaking Away (1979)", "Tombstone (1993)", '
            '"High Noon (1952)", "Space Cowboys (2000)", "Better Than Chocolate (1999)". Leverage the information to '
            'predict whether the user would enjoy the movie titled "Deconstructing Harry (1997)"? ' + TAIL)
    assert split_prompts(ds, test.take([0]))[0] == want


def test_empty_history_is_unkow(ml1m_dir):
    ds = _shared(ml1m_dir)
    test = ds["test"]
    assert test.row[13] == 186 and test.history(13).tolist() == [0]
    want = (Q + 'unkow. Leverage the information to predict whether the user would enjoy the movie titled '
            '"Being John Malkovich (1999)"? ' + TAIL)
    assert split_prompts(ds, test.take([13]))[0] == want


def test_every_prompt_of_a_split(ml1m_dir):
    ds = _shared(ml1m_dir)
    s = ds["valid_small"]
    prompts = split_prompts(ds, s)
    assert len(prompts) == len(s)
    for j in (0, 1, 2500, len(s) - 1):
        titles = ds.item_titles[s.history(j)[1:]].tolist()[-10:]
        assert prompts[j].count('", "') == max(len(titles) - 1, 0)
        assert f'titled "{ds.item_titles[s.iid[j]]}"?' in prompts[j]


def test_quirk_switches():
    his = ["A (1990)", "", "B (1991)", "C (1992)"]
    default = render_prompt(his, " T (2000) ", PromptConfig())
    assert default == Q + '"A (1990)", "B (1991)", "C (1992)". Leverage the information to predict whether the user ' \
                          'would enjoy the movie titled "T (2000)"? ' + TAIL
    assert render_prompt(his, "T", PromptConfig(literal_backslash_n=False)).endswith('"No". \n#Answer:')
    assert render_prompt([], "T", PromptConfig(empty_history_word="unknown")).startswith(Q + "unknown. ")
    assert render_prompt(["", ""], "T", PromptConfig()).startswith(Q + "unkow. ")
    assert render_prompt(his, "T", PromptConfig(max_titles=2)).startswith(Q + '"B (1991)", "C (1992)". ')
    assert render_prompt(his, "T", PromptConfig(drop_empty_titles=False, max_titles=3)).startswith(
        Q + '"", "B (1991)", "C (1992)". ')
    assert 'titled " T (2000) "?' in render_prompt(his, " T (2000) ", PromptConfig(strip_target=False))
    book = render_prompt(["Dune"], "Emma", PromptConfig(domain="book"))
    assert book == ('#Question: A user has given high ratings to the following books: "Dune". Leverage the information '
                    'to predict whether the user would enjoy the book titled "Emma"? ' + TAIL)
    with pytest.raises(KeyError):
        render_prompt([], "T", PromptConfig(domain="music"))

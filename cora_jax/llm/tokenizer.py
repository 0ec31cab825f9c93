"""Tokenizers: from an HF directory (AutoTokenizer, never trust_remote_code) or rebuilt from GGUF
metadata (byte-level BPE with `tokenizers`); BOS prepended as the reference does, where the model has
one; left-padded batches and length bucketing for scoring."""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import numpy as np

from .errors import ConfigError
from .gguf_file import gguf_reader, gguf_value

# GGUF `tokenizer.ggml.pre` -> the split regex llama.cpp applies before byte-level BPE.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: Llama-3's regex with single digits
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    # SmolLM2: every digit on its own first (HF: Digits(individual_digits=True)), then GPT-2's regex
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "gpt2": (_GPT2_SPLIT,), "default": (_GPT2_SPLIT,),
    "llama-bpe": (_LLAMA3_SPLIT,), "llama3": (_LLAMA3_SPLIT,), "llama-v3": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
}
_CONTROL = 3  # GGUF token_type of control (special) tokens


class Tokenizer:
    """Text -> ids with BOS prepended; answer-token lookup; left-padded batches."""

    def __init__(self, encode_many: Callable[[list[str]], list[list[int]]], *, bos_id: int | None,
                 pad_id: int, id_to_token: Callable[[int], str], decode: Callable[[list[int]], str], source: str):
        self._encode_many = encode_many  # texts -> ids without special tokens
        self.bos_id = bos_id
        self.pad_id = pad_id
        self.id_to_token = id_to_token
        self.decode = decode  # ids -> text
        self.source = source

    # ----------------------------------------------------------------------- constructors
    @classmethod
    def from_path(cls, path) -> "Tokenizer":
        path = pathlib.Path(path)
        return cls.from_gguf(path) if path.suffix == ".gguf" else cls.from_hf_dir(path)

    @classmethod
    def from_hf_dir(cls, root) -> "Tokenizer":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)

        def encode_many(texts):
            return tok(list(texts), add_special_tokens=False)["input_ids"]

        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return cls(encode_many, bos_id=tok.bos_token_id, pad_id=pad,
                   id_to_token=tok.convert_ids_to_tokens, decode=tok.decode, source=str(root))

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        """Byte-level BPE rebuilt from `tokenizer.ggml.*` metadata (tokens, merges, pre-tokenizer)."""
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        reader = gguf_reader(path)
        where = str(path)
        kind = gguf_value(reader, "tokenizer.ggml.model", where)
        if kind != "gpt2":
            raise ConfigError(f"{where}: tokenizer.ggml.model {kind!r} is not rebuilt from GGUF (only byte-level "
                              "BPE 'gpt2'); load the model from its HF directory to use its own tokenizer")
        pre = gguf_value(reader, "tokenizer.ggml.pre", where, default="default")
        if pre not in _PRE_SPLITS:
            raise ConfigError(f"{where}: tokenizer.ggml.pre {pre!r} is not known (known: {sorted(_PRE_SPLITS)})")
        tokens = gguf_value(reader, "tokenizer.ggml.tokens", where)
        merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges", where)]
        types = gguf_value(reader, "tokenizer.ggml.token_type", where, default=[])
        backend = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                         fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _PRE_SPLITS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        # control tokens (<|im_start|>, <|endoftext|>, ...) are matched whole in the text
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i, t in enumerate(types) if t == _CONTROL])

        def encode_many(texts):
            return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

        bos = gguf_value(reader, "tokenizer.ggml.bos_token_id", where, default=None)
        eos = gguf_value(reader, "tokenizer.ggml.eos_token_id", where, default=0)
        pad = gguf_value(reader, "tokenizer.ggml.padding_token_id", where, default=eos)
        if gguf_value(reader, "general.architecture", where, default=None) == "qwen2":
            bos = None  # Qwen2 has no BOS (HF bos_token null); llama.cpp writes config.json's <|endoftext|> id here
        return cls(encode_many, bos_id=None if bos is None else int(bos), pad_id=int(pad),
                   id_to_token=lambda i: tokens[i], decode=backend.decode, source=where)

    # ---------------------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Ids of `text` with BOS prepended (as the reference does)."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        prefix = [] if self.bos_id is None else [self.bos_id]
        return [prefix + list(ids) for ids in self._encode_many(list(texts))]

    def encode_with_slots(self, texts: Sequence[str], markers: Sequence[str],
                          tokens_per_slot: int) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, slots) per text: each occurrence of markers[k] (and the space before it) becomes
        tokens_per_slot placeholder tokens (pad ids) whose slot numbers are k*tokens_per_slot + 1 ...
        (k+1)*tokens_per_slot; text tokens have slot 0. The pieces between markers are tokenised
        separately, so a slot never merges with its neighbours. Models put their own input
        embeddings at slot positions (cora_jax.llm.Llama.embed_slots)."""
        import re

        pattern = re.compile(" ?(" + "|".join(re.escape(m) for m in markers) + ")")
        prefix = [] if self.bos_id is None else [self.bos_id]
        plans = []
        for text in texts:
            pieces, kinds, pos = [], [], 0
            for m in pattern.finditer(text):
                pieces.append(text[pos:m.start()])
                kinds.append(list(markers).index(m.group(1)))
                pos = m.end()
            pieces.append(text[pos:])
            plans.append((pieces, kinds))
        flat = self._encode_many([p for pieces, _ in plans for p in pieces if p])
        ids_out, slots_out, at = [], [], 0
        for pieces, kinds in plans:
            ids, slots = list(prefix), [0] * len(prefix)
            for j, piece in enumerate(pieces):
                if piece:
                    ids += flat[at]
                    slots += [0] * len(flat[at])
                    at += 1
                if j < len(kinds):
                    ids += [self.pad_id] * tokens_per_slot
                    slots += [kinds[j] * tokens_per_slot + s + 1 for s in range(tokens_per_slot)]
            ids_out.append(ids)
            slots_out.append(slots)
        return ids_out, slots_out

    def answer_token_id(self, answer: str = "Yes", prompt: str = "#Answer:") -> int:
        """The token the model emits first after `prompt` when answering `answer`, found by tokenising
        prompt + answer with the model's own tokenizer. The answer follows a space unless the prompt ends
        in whitespace, so the token is " Yes" for byte-level BPE (Llama-3, Qwen2, SmolLM2) and "▁Yes"
        for sentencepiece (Llama-2, Mistral), never the space-less "Yes" that a byte-level BPE gives
        for the answer tokenised alone."""
        text = prompt + ("" if prompt[-1:].isspace() else " ") + answer
        base, full = self._encode_many([prompt, text])
        if full[:len(base)] != base or len(full) == len(base):
            raise ConfigError(f"{self.source}: tokenising {text!r} does not extend the tokens of {prompt!r}; "
                              f"cannot tell which token answers {answer!r}")
        first = full[len(base)]
        piece = self.decode([first]).strip()
        if not piece or not answer.startswith(piece):  # e.g. a tokenizer that makes the space a token of its own
            raise ConfigError(f"{self.source}: the first token after {prompt!r} in {text!r} is "
                              f"{self.id_to_token(first)!r}, which does not begin {answer!r}")
        return int(first)

    def batch(self, texts: Sequence[str], *, max_len: int | None = None,
              pad_multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int32 [B, T], attention_mask int32 [B, T]), left padded.

        T is the longest row rounded up to pad_multiple (fewer distinct shapes -> fewer compiles);
        rows longer than max_len keep their last max_len tokens (the question's end).
        """
        rows = self.encode_many(texts)
        if max_len is not None:
            rows = [r[-max_len:] for r in rows]
        T = max(len(r) for r in rows)
        T = -(-T // pad_multiple) * pad_multiple
        ids = np.full((len(rows), T), self.pad_id, np.int32)
        mask = np.zeros((len(rows), T), np.int32)
        for i, r in enumerate(rows):
            if r:
                ids[i, T - len(r):] = r
                mask[i, T - len(r):] = 1
        return ids, mask


def length_buckets(lengths: Sequence[int], batch_size: int, *, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, so left padding stays small.

    Sorted by length and cut into batches; with `rng` the batch order is shuffled (training),
    without it batches come shortest first (scoring; put scores back with the returned indices).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches

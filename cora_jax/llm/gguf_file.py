"""Opening a GGUF file and reading its metadata, shared by the config, tokenizer and weight readers."""
from __future__ import annotations

import pathlib

from .errors import ConfigError, WeightError


def gguf_reader(path):
    import gguf  # imported on first use: only GGUF files need it

    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightError(f"{path}: no such GGUF file: check the path")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, KeyError) as e:
        raise WeightError(f"{path}: not a readable GGUF file, truncated or corrupt ({e}): download it again") from e


def gguf_value(reader, key: str, where: str, default=...):
    """Scalar/str/list value of a GGUF metadata key; `...` default means required."""
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise ConfigError(f"{where}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()

"""Which file of an unreadable Orbax checkpoint is damaged, and why: its OCDBT index checked against the files."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import tensorstore as ts

# "<kind>:<base path>:<relative path>:<offset>:<length>": where an OCDBT index puts a node or a value
_LOCATION = re.compile(r"(value|btreenode|versionnode):([^:]*):([^:]*):(\d+):(\d+)")


def _locations(tree: Any, key: bytes | None = None):
    """(key, location match) of every location in a dumped OCDBT node; key: the entry's, for values."""
    if isinstance(tree, str):
        match = _LOCATION.fullmatch(tree)
        if match:
            yield key, match
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _locations(v, tree.get("key"))
    elif isinstance(tree, list):
        for v in tree:
            yield from _locations(v)


class _UnreadableIndex(Exception):
    """A node of an OCDBT index (its manifest or a tree node) that cannot be decoded."""

    def __init__(self, file: pathlib.Path, why: str):
        self.file, self.why = str(file), why
        super().__init__(f"{file}: {why}")


def _indexed_files(item_dir: pathlib.Path):
    """(key, file, bytes the file must have) of each tree node (key None) and stored value that the
    OCDBT database in item_dir indexes, parents before children. Reads only the index; a node that
    does not decode raises _UnreadableIndex."""
    kv = ts.KvStore.open({"driver": "file", "path": f"{item_dir}/"}).result()
    pending: list[tuple[str | None, pathlib.Path]] = [(None, item_dir / "manifest.ocdbt")]  # None: the manifest
    while pending:
        loc, file = pending.pop()
        try:
            node = ts.ocdbt.dump(kv, loc).result()
        except ValueError as err:
            raise _UnreadableIndex(file, _why(err)) from None
        for key, match in _locations(node):
            kind, base, rel, offset, length = match.groups()
            yield key, item_dir / base / rel, int(offset) + int(length)
            if kind != "value":
                pending.append((match.group(0), item_dir / base / rel))


def damaged_file(item_dir: pathlib.Path) -> tuple[str, str] | None:
    """(file, why) of the first file that the OCDBT database in item_dir indexes but that is missing,
    shorter than the index says or (an index node) undecodable; None when all are fine (or item_dir
    holds no such database)."""
    if not (item_dir / "manifest.ocdbt").is_file():
        return None if item_dir.is_dir() else (str(item_dir), "missing")
    try:
        for _, path, need in _indexed_files(item_dir):
            if not path.is_file():
                return str(path), "missing"
            if path.stat().st_size < need:
                return str(path), f"truncated to {path.stat().st_size} bytes, its index needs {need} bytes"
    except _UnreadableIndex as err:
        return err.file, err.why
    return None


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def unreadable(err: BaseException) -> bool:
    """Whether err says a file could not be read or decoded: an OS error, bad JSON, or a TensorStore
    status ("DATA_LOSS: ...", "NOT_FOUND: ...") anywhere in its chain."""
    return any(isinstance(e, (OSError, json.JSONDecodeError)) or re.match(r"[A-Z][A-Z_]+: ", str(e))
               for e in _chain(err))


def describe(err: BaseException, step_dir: pathlib.Path, items: tuple[str, ...]) -> tuple[str, str]:
    """(file, why) of an unreadable checkpoint: the most specific file the errors name (the data file
    of the array value TensorStore failed on; else the items' folders), and the innermost error's
    first line, without TensorStore's spec and the paths already named."""
    errors = list(_chain(err))
    file = None
    for e in errors:
        text = str(e)
        names = re.findall(r'local file "([^"]+)"', text) or re.findall(r"(/[^\s\"']+?)\.?$", text.split("\n")[0])
        file = getattr(e, "filename", None) or (names[-1] if names else None) or file
        value = re.search(r'Error reading "([^"]+)" in OCDBT database at local file "([^"]+)"', text)
        if value:
            file = _value_file(pathlib.Path(value.group(2)), value.group(1).encode()) or file
    return file or ", ".join(str(step_dir / i) for i in items), _why(errors[-1])


def _why(err: BaseException) -> str:
    """err's first line, without TensorStore's spec and the paths it names (said beside it)."""
    why = str(err).split(" [tensorstore_spec=")[0].split("\n")[0]
    if 'local file "' in why:
        return why.rsplit('": ', 1)[-1][:300]
    if not re.match(r"[A-Z][A-Z_]+: ", why):
        why = f"{type(err).__name__}: {why}" if why else type(err).__name__
    return why[:300]


def _value_file(item_dir: pathlib.Path, key: bytes) -> str | None:
    """The data file holding `key` in the OCDBT database item_dir, if its index can be read."""
    try:
        return next((str(path) for k, path, _ in _indexed_files(item_dir) if k == key), None)
    except (ValueError, _UnreadableIndex):
        return None

"""Write a `Dataset` as a CoLLM-layout split folder, byte for byte in the shared layout."""
from __future__ import annotations

import gzip
import io
import json
import pathlib

from cora_jax.data.split import SPLIT_NAMES, Dataset, Split


def split_jsonl(ds: Dataset, split: Split) -> str:
    """The split as JSON Lines text, byte-for-byte in the shared layout (flag as a float, raw UTF-8)."""
    titles = ds.item_titles
    out = io.StringIO()
    his_list = split.his_values.tolist()
    off = split.his_offsets.tolist()
    cols = [c.tolist() for c in (split.row, split.uid, split.iid, split.label, split.timestamp,
                                 split.flag, split.not_cold)]
    for j, (row, uid, iid, label, ts, flag, nc) in enumerate(zip(*cols)):
        his = his_list[off[j] : off[j + 1]]
        obj = {"row": row, "uid": uid, "iid": iid, "label": label, "timestamp": ts, "his": his,
               "his_title": [titles[i] for i in his], "title": titles[iid], "flag": float(flag),
               "not_cold": nc}
        out.write(json.dumps(obj, ensure_ascii=False))
        out.write("\n")
    return out.getvalue()


def write_dataset(ds: Dataset, out: str | pathlib.Path, meta: dict | None = None) -> pathlib.Path:
    """Write the four splits (and BUILD.json with `meta` + domain) into folder `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        data = split_jsonl(ds, ds.splits[name]).encode("utf-8")
        with open(out / f"{name}.jsonl.gz", "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0
        ) as gz:
            gz.write(data)
    (out / "BUILD.json").write_text(json.dumps({"domain": ds.domain, **(meta or {})}, indent=2) + "\n")
    return out


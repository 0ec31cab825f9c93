"""What a compiled (SPMD-partitioned) XLA program does per device, read from its HLO text:
bytes of every collective and FLOPs of every dot, each counted as often as it runs.

XLA's own cost_analysis() counts a while-loop body once; the decoder layers run in a scanned loop,
so every figure here is multiplied by the trip counts of the loops around it (`known_trip_count`,
which XLA records for a scan). The HLO of a compiled jax function: `jax.jit(f).lower(...).compile().as_text()`.

Per collective, `result_bytes` is the size of its result on one device (what a closed form counts:
a gathered weight, a gradient buffer); `wire_bytes` is what one device sends with the bandwidth-
optimal ring algorithms over a group of N devices, the figure a link bandwidth divides:
    all-gather (N-1)/N x result        reduce-scatter (N-1) x result (= (N-1)/N x input)
    all-reduce 2(N-1)/N x result       all-to-all (N-1)/N x result       collective-permute result
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMP_START = re.compile(r"^(ENTRY )?%(\S+) .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation)="
                     r"(\{[^}]*\}|%[^\s,)]+)")


@dataclasses.dataclass
class Collective:
    kind: str                # one of COLLECTIVES
    name: str                # HLO instruction name
    result_bytes: int        # result size on one device, per execution
    group: int               # devices in its replica group
    count: int               # executions per step (product of enclosing loop trip counts)
    span: int                # device ids one group covers (max - min + 1): > devices per node = crosses nodes
    op_name: str             # jax op that caused it (metadata), e.g. ".../transpose(jvp())/while/body/..."

    @property
    def wire_bytes(self) -> float:
        n = self.group
        if n <= 1:
            return 0.0
        factor = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
                  "all-to-all": (n - 1) / n, "collective-permute": 1.0}[self.kind]
        return factor * self.result_bytes


def _array_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays); layouts and token types ignored."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _dims(shape_text: str) -> list[int]:
    m = _ARRAY.search(shape_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _iota(text: str) -> np.ndarray:
    """Device ids of XLA's iota notation "[d0,d1,...]" or "[d0,d1,...]T(perm)", flattened."""
    m = re.match(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", text)
    dims = [int(d) for d in m.group(1).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    return (ids.transpose([int(d) for d in m.group(2).split(",")]) if m.group(2) else ids).ravel()


def _first_group(line: str, n_devices: int) -> list[int]:
    """Device ids of the first replica group, from any of XLA's spellings of replica_groups."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(([^)]*\)?)\))?\s*\{([^}]*)\}", line)
    if m:  # mesh['axis_0'=2,'axis_1'=4][, device_ids=([4,2]T(1,0))] {'axis_1'}: the listed axes vary
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        listed = set(re.findall(r"'([^']+)'", m.group(3)))
        ids = _iota(m.group(2)) if m.group(2) else np.arange(math.prod(int(n) for _, n in axes))
        ids = ids.reshape([int(n) for _, n in axes])
        return ids[tuple(slice(None) if a in listed else 0 for a, _ in axes)].ravel().tolist()
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=(\[[0-9,]+\](?:T\([0-9,]+\))?)", line)
    if m:  # iota form [groups,size]<=[dims] with an optional transpose
        return _iota(m.group(3)).reshape(int(m.group(1)), int(m.group(2)))[0].tolist()
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if m:
        return [int(d) for d in m.group(1).split(",")]
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if m:  # collective-permute: each device talks to one peer; the farthest pair sets the span
        pairs = [(int(a), int(b)) for a, b in re.findall(r"(\d+),(\d+)", m.group(1))]
        far = max(pairs, key=lambda ab: abs(ab[0] - ab[1]))
        return sorted(far)
    return list(range(n_devices))  # replica_groups={}: every device


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        m = _COMP_START.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _multiplicities(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of the entry (while bodies x trip count)."""
    calls: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for comp, lines in comps.items():
        for line in lines:
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            for kind, target in _CALLEE.findall(line):
                factor = int(trip.group(1)) if (kind == "body" and trip) else 1
                for callee in re.findall(r"%([^\s,}]+)", target):
                    calls[comp].append((callee, factor))
    order, seen = [], set()

    def visit(c: str) -> None:  # post-order DFS; reversed, callers come before callees
        seen.add(c)
        for callee, _ in calls.get(c, ()):
            if callee not in seen and callee in comps:
                visit(callee)
        order.append(c)

    visit(entry)
    mult = defaultdict(int, {entry: 1})
    for c in reversed(order):
        for callee, factor in calls.get(c, ()):
            mult[callee] += mult[c] * factor
    return dict(mult)


def collectives(hlo: str, n_devices: int) -> list[Collective]:
    """Every collective of the program with its size, group and executions per step."""
    comps, entry = _computations(hlo)
    mult = _multiplicities(comps, entry)
    out = []
    for comp, lines in comps.items():
        for line in lines:
            m = _INSTR.match(line)
            if not m or mult.get(comp, 0) == 0:
                continue
            name, shape, op = m.group(1), m.group(2), m.group(3)
            kind = op.removesuffix("-start")
            if kind not in COLLECTIVES:
                continue
            arrays = [s for s in _ARRAY.finditer(shape) if s.group(1) in _DTYPE_BYTES]
            if op.endswith("-start") and kind in ("all-gather", "collective-permute"):
                # async start: (operands..., results...[, contexts]); the results are the second half
                arrays = [a for a in arrays if a.group(1) not in ("u32", "s32") or a.group(2)]
                arrays = arrays[len(arrays) // 2:]
            size = sum(_array_bytes(a.group(0)) for a in arrays)
            op_name = re.search(r'op_name="([^"]*)"', line)
            group = _first_group(line, n_devices)
            group_size = 2 if kind == "collective-permute" else len(group)
            out.append(Collective(kind, name, size, group_size, mult[comp], max(group) - min(group) + 1,
                                  op_name.group(1) if op_name else ""))
    return out


def collective_totals(colls: list[Collective]) -> dict[str, dict[str, float]]:
    """{kind: {"result_bytes", "wire_bytes", "ops"}} per step and device, every kind present (zeros)."""
    tot = {k: {"result_bytes": 0.0, "wire_bytes": 0.0, "ops": 0} for k in COLLECTIVES}
    for c in colls:
        if c.group > 1:
            t = tot[c.kind]
            t["result_bytes"] += c.result_bytes * c.count
            t["wire_bytes"] += c.wire_bytes * c.count
            t["ops"] += c.count
    return tot


def dot_flops(hlo: str) -> float:
    """2 x (result elements) x (contracted size), summed over every dot as often as it runs."""
    comps, entry = _computations(hlo)
    mult = _multiplicities(comps, entry)
    total = 0.0
    for comp, lines in comps.items():
        if not mult.get(comp):
            continue
        shapes = {}
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            shapes[m.group(1)] = m.group(2)
            if m.group(3) != "dot":
                continue
            lhs = re.match(r"\s*%([^\s,)]+)", m.group(4)).group(1)
            contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
            lhs_dims = _dims(shapes.get(lhs, ""))
            k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
            total += 2.0 * math.prod(_dims(m.group(2))) * k * mult[comp]
    return total

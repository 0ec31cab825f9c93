"""Collectives of the compiled sharded CoRA step (cora_jax.train.hlo on 8 simulated CPU devices)
against their closed forms, per device and step, for a tiny float32 Llama.

What XLA's CPU backend emits (jax 0.10.2), and where it departs from the textbook forms:
  FSDP N      every frozen layer weight is all-gathered once in the forward scan and once more in
              the backward scan (2 x L x the layer's weights; no remat here); the generator's output
              projection (the one FSDP-split trainable outside the layers) once. Gradients of the
              trainables are all-reduced whole: the CPU pipeline has no reduce-scatter creation, so
              the FSDP-split ones are all-reduced and then sliced (a GPU compile turns that into a
              reduce-scatter). P of o_proj is split on d_model too and gathered with the weights.
              With a data axis too, the FSDP-split gradients' slices are all-reduced over it after.
  data N      one all-reduce of the trainables' gradients, nothing of the frozen LLM.
  tensor N    Megatron's form is 2 all-reduces of [B, T, d_model] per layer forward and 2 backward.
              XLA keeps the residual stream split over d_model between layers, so each RMSNorm output
              is all-gathered before the column-parallel projections (2 per layer forward, 2
              backward), and without all-reduce reassociation the partial input gradients of q, k, v
              and of gate, up are all-reduced one by one before they are summed: 5 backward.
"""
import math

import jax
import pytest

from cora_jax.cora import GeneratorConfig
from cora_jax.train import hlo
from cora_jax.train.memory import MemoryRequest, abstract_step
from llm_helpers import tiny_config

CFG = tiny_config(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=8, head_dim=16,
                  num_hidden_layers=2)
GEN = GeneratorConfig(num_layers=1, hidden=16, num_heads=2, ffn_dim=32)
B, T, R, CF = 8, 16, 2, 8
F32 = 4
TOL = 0.02


def _compile(mesh):
    req = MemoryRequest(batch=B, seq=T, rank=R, cf_dim=CF, dtype="float32", mesh=mesh)
    step = abstract_step(req, llm_cfg=CFG, generator=GEN)
    text = step["lowered"].compile().as_text()
    trainable = sum(math.prod(x.shape) for x in jax.tree.leaves(step["trainable"])) * F32
    return hlo.collective_totals(hlo.collectives(text, math.prod(mesh))), trainable


LAYER_WEIGHTS = F32 * sum(i * o for i, o in CFG.target_dims().values())
P_O = F32 * R * CFG.hidden_size                      # P of o_proj, split on d_model like the weights
GEN_PROJ = F32 * GEN.hidden * CFG.hidden_size * R    # generator output projection, split on d_model * r
ACT = F32 * B * T * CFG.hidden_size                  # one [B, T, d_model] activation
L = CFG.num_hidden_layers


def _close(measured, expected, what):
    assert measured == pytest.approx(expected, rel=TOL), f"{what}: measured {measured:,.0f} B, closed form {expected:,.0f} B"


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 4, 1)], ids=["fsdp8", "data2xfsdp4"])
def test_fsdp_gathers_frozen_weights_twice_and_reduces_only_trainable_gradients(mesh):
    data, fsdp, _ = mesh
    tot, trainable = _compile(mesh)
    _close(tot["all-gather"]["result_bytes"], 2 * L * (LAYER_WEIGHTS + P_O) + GEN_PROJ, "all-gather")
    # data x fsdp reduces hierarchically: whole gradients over the fsdp group, then each device's
    # 1/fsdp slice of the FSDP-split ones (P of o_proj, the generator projection) over the data group
    split = L * P_O + GEN_PROJ
    _close(tot["all-reduce"]["result_bytes"], trainable + (split / fsdp if data > 1 else 0), "all-reduce")
    assert tot["reduce-scatter"]["ops"] == 0  # CPU: all-reduce + slice (see the module docstring)
    other = tot["all-to-all"]["result_bytes"] + tot["collective-permute"]["result_bytes"]
    assert other < TOL * tot["all-gather"]["result_bytes"]  # the embedding lookup's small reshards only


@pytest.mark.slow
def test_data_parallel_all_reduces_the_trainable_gradients_only():
    tot, trainable = _compile((8, 1, 1))
    _close(tot["all-reduce"]["result_bytes"], trainable, "all-reduce")
    assert sum(tot[k]["ops"] for k in hlo.COLLECTIVES if k != "all-reduce") == 0


@pytest.mark.slow
def test_tensor_parallel_moves_activations_per_layer():
    tot, _ = _compile((1, 1, 4))
    # plus, per layer, 6 [B, T, r] partial products of the side branch (x G of the q/k/v input and ctx G
    # of o_proj forward, 4 backward) and 4 RMSNorm statistics [B, T] (the residual stream is split)
    branch, stats = F32 * B * T * R, F32 * B * T
    _close(tot["all-reduce"]["result_bytes"], L * ((2 + 5) * ACT + 6 * branch + 4 * stats), "all-reduce")
    # plus, once per step outside the layer loop, G's gradient [B, d_model, r] and the three head-split
    # P of q/k/v (gathered whole; the CPU HLO carries no jax op name for these)
    p_qkv = F32 * L * R * sum(CFG.target_dims()[t][1] for t in ("q_proj", "k_proj", "v_proj"))
    _close(tot["all-gather"]["result_bytes"], L * (2 + 2) * ACT + F32 * B * CFG.hidden_size * R + p_qkv, "all-gather")


def test_hlo_reader_counts_loop_trips_and_groups():
    text = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %ag = f32[4,8]{1,0} all-gather(%x), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={1}
  ROOT %t = (s32[], f32[4]) tuple(%i, %y)
}

%cond (p: (s32[], f32[4])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"6"}}
  %ar = bf16[16]{0} all-reduce(%a), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
  %rs = f32[2]{0} reduce-scatter(%a), channel_id=3, replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}
  ROOT %d = f32[4,4]{1,0} dot(%m, %n), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
    colls = {c.kind: c for c in hlo.collectives(text, 8)}
    ag, ar, rs = colls["all-gather"], colls["all-reduce"], colls["reduce-scatter"]
    assert (ag.count, ag.group, ag.span, ag.result_bytes) == (6, 4, 4, 128)
    assert (ar.count, ar.group, ar.span, ar.result_bytes) == (1, 8, 8, 32)
    assert (rs.group, rs.span) == (2, 5)  # transposed iota: devices {0, 4}
    tot = hlo.collective_totals(list(colls.values()))
    assert tot["all-gather"]["wire_bytes"] == 6 * 128 * 3 / 4 and tot["all-reduce"]["wire_bytes"] == 32 * 2 * 7 / 8

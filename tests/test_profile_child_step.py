"""benchmarks/profile_child_step.py: HLO parsing, attribution of ops to layers and passes, and one
real profiled run of a tiny network (no timing is asserted, only that time is attributed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import profile_child_step as prof  # noqa: E402

_HLO = """
ENTRY %main {
  %ynn_fusion.16 = f32[5,50176,576]{2,1,0} fusion(%a, %b), kind=kCustom, calls=%c.16, metadata={op_name="jit(program)/vmap()/while/body/closed_call/transpose(jvp(ChildNet))/Conv_1/dot_general" stack_frame_id=417}
  ROOT %concatenate.95 = f32[5,64,28,28,576]{4,3,2,1,0} concatenate(%p0, %p1), dimensions={4}, metadata={op_name="jit(program)/vmap()/while/body/closed_call/jvp(ChildNet)/Conv_1/concatenate"}
  %while.3 = (s32[]) while(%t), condition=%cond, body=%body
}
"""


def test_hlo_ops_reads_names_opcodes_and_metadata():
    ops = prof.hlo_ops(_HLO)
    assert ops["ynn_fusion.16"][0] == "fusion"
    assert ops["ynn_fusion.16"][1].endswith("transpose(jvp(ChildNet))/Conv_1/dot_general")
    assert ops["concatenate.95"][0] == "concatenate"
    assert ops["while.3"] == ("while", "")


def test_attribute_splits_forward_backward_eval_and_other():
    base = "jit(program)/vmap()/while/body/closed_call/while/body/closed_call/"
    assert prof.attribute(base + "transpose(jvp(ChildNet))/Conv_1/dot_general") == (
        "backward", "Conv_1")
    assert prof.attribute(base + "jvp(ChildNet)/BatchNorm_0/sub") == ("forward", "BatchNorm_0")
    assert prof.attribute(base + "jvp(ChildNet)/jit(relu)/max") == ("forward", "relu")
    assert prof.attribute("jit(program)/vmap()/while/body/closed_call/ChildNet/Conv_1/dot_general"
                          ) == ("eval", "Conv_1")
    assert prof.attribute("jit(program)/vmap(ChildNet)/Conv_0/jit(_uniform)/add") == (
        "init", "Conv_0")
    assert prof.attribute(base + "add")[0] == "other"


def test_profiling_a_tiny_network_attributes_conv_time_to_both_passes(tmp_path):
    out = tmp_path / "prof.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "profile_child_step.py"), "--model", "tinycnn",
           "--dataset", "synthetic", "--seeds", "2", "--steps", "2", "--test-subset", "64",
           "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| layer | forward ms | backward ms" in done.stdout
    rows = json.loads(out.read_text())["ops"]
    conv = {(r["pass"], r["layer"]) for r in rows if r["ms"] > 0}
    assert ("forward", "Conv_0") in conv and ("backward", "Conv_0") in conv

"""Smoke test of `esr-tf bench`: the quick run writes every figure with a number and a target.

No timing is asserted: speeds depend on the machine and its load. The quick run uses random-init
tiny backbones (no weight wheels needed).
"""

from __future__ import annotations

import json
import math

import pytest

from esr_tf.bench.run import TARGETS
from esr_tf.models.builder import TINY_MODEL as TINY


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from esr_tf.bench.run import run_benchmarks

    out = tmp_path_factory.mktemp("bench")
    result = run_benchmarks(out, quick=True, model_overrides=TINY, side_experiments=True)
    return out, result


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_every_figure_has_a_number_and_a_target(bench):
    out, result = bench
    written = json.loads((out / "bench.json").read_text())
    assert set(written["figures"]) == set(TARGETS)
    for key, figure in written["figures"].items():
        assert figure["target"]["op"] in (">=", "<="), key
        assert _is_number(figure["target"]["value"]), key
        if figure.get("skipped"):  # only the C++ client may be skipped, with its reason
            assert key == "cpp_vs_python_b1" and figure["value"] is None
        else:
            assert _is_number(figure["value"]) and figure["value"] > 0, key
            assert figure["met"] in (True, False), key
    assert written == json.loads(json.dumps(result, default=str))


@pytest.mark.slow
def test_machine_flops_and_side_experiments_recorded(bench):
    out, result = bench
    assert result["machine"]["cpu_model"] and result["machine"]["tensorflow"]
    assert result["matmul"]["peak_gflops"] > 0
    per_example = result["flops"]["per_training_example"]
    assert per_example["full_text_trainable"] > per_example["full_frozen"] > 0
    assert "3 x forward" in per_example["formula"]
    for name in ("tf.data parallel vs serial", "cached vs uncached frozen backbones"):
        assert name in result["side_experiments"]
    for key, measurement in result["measurements"].items():
        assert measurement["value"] is None or _is_number(measurement["value"]), key


@pytest.mark.slow
def test_markdown_table_lists_every_figure(bench):
    out, _ = bench
    table = (out / "bench.md").read_text()
    assert table.startswith("| figure | value | target | met? |")
    for key in TARGETS:
        assert f"| {key} |" in table


def test_training_flops_follow_the_stated_formula():
    from esr_tf.bench.figures import training_flops

    forward = {"text_encoder": 100, "image_encoder": 50, "image_projector": 2, "fusion_head": 8}
    rows = [{"branch": k, "flops": v} for k, v in forward.items()]
    rows.append({"branch": "total", "flops": sum(forward.values())})
    flops = training_flops(rows)
    assert flops["head_cached"] == 3 * (2 + 8)
    assert flops["full_frozen"] == 100 + 50 + 3 * (2 + 8)
    assert flops["full_text_trainable"] == 3 * 100 + 50 + 3 * (2 + 8)


def test_side_experiments_without_time_only_derive_from_the_figures():
    from esr_tf.bench.figures import side_experiments

    raw = {
        "pipeline": {
            "parallel_cached_ex_s": 300.0,
            "parallel_uncached_ex_s": 250.0,
            "serial_ex_s": 100.0,
        },
        "train_examples": 2000,
        "features": {"ms_per_example": 12.0},
        "head": {"ex_s": 400.0},
        "full_frozen": {"ex_s": 40.0},
    }
    sides = side_experiments(
        None, None, None, raw, batch_size=32, repeats=1, head_steps=(1, 2), time_left=lambda: 0.0
    )
    cached = sides["cached vs uncached frozen backbones"]
    assert cached["step_speedup"] == pytest.approx(10.0)
    # 12 epochs uncached: 12 * 2000 / 40 = 600 s; cached: 2000 * 12 ms + 12 * 2000 / 400 = 84 s.
    assert cached["estimated_12_epoch_speedup"] == pytest.approx(600 / 84)
    for name in (
        "sequence length 32 vs 64",
        "image resolution 160 vs 224",
        "XLA jit_compile on the head only",
    ):
        assert sides[name] == {"skipped": "time budget spent"}

"""Smoke test of `esr-tf bench --suite precision`: both precisions have their figures (no timing asserted)."""

from __future__ import annotations

import json
import math

from esr_tf.cli import main
from esr_tf.models.builder import TINY_MODEL as TINY


def test_quick_precision_suite_writes_every_figure(tmp_path):
    from esr_tf.bench.precision import run_precision_bench

    run_precision_bench(tmp_path, quick=True, model_overrides=TINY)
    result = json.loads((tmp_path / "precision.json").read_text())
    for precision in ("float32", "bfloat16"):
        for key in ("text_ms_per_pair", "image_ms_per_photo"):
            assert math.isfinite(result["speed"][precision][key]) and result["speed"][precision][key] > 0
    agreement = result["agreement"]
    assert 0 < agreement["token"]["mean"] < 0.05 and agreement["token"]["vectors"] > result["pairs"]
    assert 0 <= agreement["photo"]["mean"] < 0.05 and 0.5 <= agreement["same_label"] <= 1.0
    assert len(result["load_average"]["before"]) == 3
    auto = result["auto_choice"]
    assert auto["precision"] in ("float32", "bfloat16") and all(v > 0 for v in auto["estimated_pass_seconds"].values())
    assert "| feature pass |" in (tmp_path / "precision.md").read_text()


def test_the_cli_offers_the_suite(capsys):
    try:
        main(["bench", "--suite", "nope"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "precision" in capsys.readouterr().err

"""Smoke test of `esr-tf bench --suite scale`: every size has its figures (no timing asserted)."""

from __future__ import annotations

import json
import math

import pytest

from esr_tf.models.builder import TINY_MODEL


@pytest.mark.slow
def test_scale_suite_writes_every_figure(tmp_path):
    from esr_tf.bench import scale
    from esr_tf.bench.scale import run_scale_bench

    tiny = [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
    # + the in-RAM run and the side-by-side speed run
    run_scale_bench(tmp_path, quick=True, overrides=[*tiny, "batch_size=64"], sizes=(300,))
    result = json.loads((tmp_path / "scale.json").read_text())
    assert [r["pairs"] for r in result["rows"]] == [300]
    for row in result["rows"]:
        for key in ("peak_rss_gb", "store_bytes_per_pair", "feature_pass_ex_s", "train_ex_s"):
            assert math.isfinite(row[key]) and row[key] > 0, key
    assert result["in_ram_reference"]["pairs"] == 300
    assert set(result["figures"]) == set(result["targets"])
    speed = result["side_by_side"]
    rounds, _ = scale.SPEED_ROUNDS[True]
    for ref in ("ram", "fixed_length_ram"):
        ratios = speed[f"ratios_vs_{ref}"]
        assert len(speed["store_ex_s"]) == len(speed[f"{ref}_ex_s"]) == len(ratios) == rounds
        assert min(ratios) <= result["figures"][f"store_vs_{ref}_train_ex_s"] <= max(ratios)
    assert (tmp_path / "scale_300" / "features").is_dir()
    assert "| pairs |" in (tmp_path / "scale.md").read_text()

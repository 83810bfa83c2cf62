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
    # + the in-RAM run and the side-by-side speed run (the photo-memory run: the next test)
    run_scale_bench(tmp_path, quick=True, overrides=[*tiny, "batch_size=64"], sizes=(300,), photo_memory=False)
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


def test_photo_memory_is_the_peak_rss_difference_per_1000_photos(tmp_path, monkeypatch):
    """#33: the in-RAM photo table's cost, from a second in-RAM run with more photos."""
    from esr_tf.bench import scale

    seen = []

    def fake_measured(command, log):
        seen.append(command[command.index("-c") + 2])  # the catalogue folder
        return {"peak_rss_gb": 2.75}

    monkeypatch.setattr(scale, "_measured", fake_measured)
    per_1000 = scale._photo_memory(tmp_path, 40, [], 124, {"peak_rss_gb": 2.5})
    assert per_1000 == pytest.approx(0.25 / 100 * 1000)
    photos = list((tmp_path / "scale_40_photos" / "images").iterdir())
    assert seen == [str(tmp_path / "scale_40_photos")] and len(photos) == 124

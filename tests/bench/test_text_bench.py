"""Smoke test of `esr-tf bench --suite text`: every setting has its figures (no timing asserted)."""

from __future__ import annotations

import json
import math

from esr_tf.models.builder import TINY_MODEL as TINY


def test_quick_text_suite_writes_every_figure(tmp_path):
    from esr_tf.bench.product_text import SETTINGS, run_text_bench

    run_text_bench(tmp_path, quick=True, model_overrides=TINY)
    result = json.loads((tmp_path / "text.json").read_text())
    rows = result["rows"]
    assert [r["name"] for r in rows] == [name for name, _, _ in SETTINGS]
    for row in rows:
        for key in ("tokens_per_pair", "serving_ms_per_pair", "feature_pass_ms_per_pair"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert 0.0 <= row["cut_share"] <= 1.0
    # The demo shop has brands and colours: reading them costs tokens.
    assert rows[1]["tokens_per_pair"] > rows[0]["tokens_per_pair"]
    assert len(result["load_average"]["before"]) == 3
    assert "| setting |" in (tmp_path / "text.md").read_text()

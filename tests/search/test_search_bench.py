"""Smoke test of `esr-tf bench --suite search`: every size has its figures (no timing asserted)."""

from __future__ import annotations

import json
import math

import pytest

from esr_tf.models.builder import TINY_MODEL as TINY


@pytest.mark.slow
def test_quick_search_suite_writes_every_figure(tmp_path):
    from esr_tf.search.bench import SIZES, run_search_bench

    run_search_bench(tmp_path, quick=True, model_overrides=TINY)
    result = json.loads((tmp_path / "search.json").read_text())
    assert [r["products"] for r in result["rows"]] == list(SIZES[True])
    for row in result["rows"]:
        for key in ("search_p50_ms", "search_p99_ms", "search_default_p50_ms", "search_default_p99_ms",
                    "catalogue_bytes_per_product", "retrieval_vs_faiss"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["search_p50_ms"] <= row["search_p99_ms"]
        # the stages (#34): retrieval alone, the query tower, the re-ranking per candidate
        assert row["retrieve_top"]["n"] == row["query_tower"]["n"] == row["retrieval"]["n"]
        assert math.isfinite(row["rerank_ms_per_candidate"])
        assert row["faiss_flat"]["n"] == row["faiss_flat_1_thread"]["n"] == row["retrieval"]["n"]
    build = result["build"]
    assert build["build_ms_per_product"] > 0 and build["catalogue_bytes_per_product"] > 0
    assert "export_bytes" not in build, "quick runs skip the export"
    assert len(result["load_average"]["before"]) == 3
    assert "| products |" in (tmp_path / "search.md").read_text()

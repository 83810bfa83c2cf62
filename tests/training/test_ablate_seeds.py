"""`esr-tf ablate --seeds`: one run per mode and seed, mean ± sd, paired differences."""

import json
from pathlib import Path

import numpy as np
import pytest

from esr_tf.training.ablate import markdown_table, summarise
from esr_tf.training.metrics import evaluation_report, query_stats

GAINS = np.array([1.0, 0.1, 0.01, 0.0])


def _run(y, q, accuracy, rng):
    """Predictions right with probability `accuracy`, as a run row plus its QueryStats."""
    pred = np.where(rng.random(y.size) < accuracy, y, (y + 1 + rng.integers(0, 3, y.size)) % 4)
    probs = np.eye(4)[pred] * 0.6 + rng.uniform(0, 0.1, size=(y.size, 4))
    report = evaluation_report(y, probs, None, q, resamples=0)
    return report, query_stats(q, y, probs, probs @ GAINS)


def test_summarise_pairs_by_seed_and_query():
    rng = np.random.default_rng(0)
    q = np.repeat(np.arange(80), 6)
    y = rng.choice(4, size=q.size, p=[0.5, 0.2, 0.1, 0.2])
    runs, stats = [], {}
    for seed in (0, 1, 2):
        for mode, accuracy in (("text_only", 0.6), ("image_only", 0.5), ("concat", 0.8)):
            report, stats[mode, seed] = _run(y, q, accuracy, rng)
            runs.append({"fusion": mode, "seed": seed, "epochs": 1, **report})
        # A mode that predicts exactly what text_only predicted: difference 0, interval [0, 0].
        runs.append({**runs[-3], "fusion": "cross_attention"})
        stats["cross_attention", seed] = stats["text_only", seed]
    result = summarise(runs, stats, resamples=300)
    assert result["seeds"] == [0, 1, 2] and result["best_single_modality"] == "text_only"
    by_mode = {row["fusion"]: row for row in result["summary"]}
    values = [r["macro_f1"] for r in runs if r["fusion"] == "concat"]
    assert by_mode["concat"]["macro_f1"]["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert by_mode["concat"]["macro_f1"]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    diff = {(row["fusion"], row["versus"]): row for row in result["differences"]}
    # single modalities are not compared; cross-attention also against concat (#29)
    assert list(diff) == [("concat", "text_only"), ("cross_attention", "text_only"), ("cross_attention", "concat")]
    concat = diff["concat", "text_only"]["macro_f1"]
    per_seed = [a["macro_f1"] - b["macro_f1"] for a, b in zip(runs[2::4], runs[0::4], strict=True)]
    assert concat["per_seed"] == pytest.approx(per_seed, abs=1e-6)
    assert concat["ci95"][0] <= concat["mean"] <= concat["ci95"][1] and concat["ci95"][0] > 0
    for m in ("accuracy", "macro_f1", "ndcg@10", "mrr"):
        assert diff["cross_attention", "text_only"][m]["ci95"] == [0.0, 0.0], m
    table = markdown_table(result)
    assert "Seeds 0, 1, 2" in table and " ± " in table and "Δ macro_f1" in table
    assert "| cross_attention | text_only | +0.000 ± 0.000 [+0.000, +0.000]" in table


@pytest.mark.slow
def test_cli_ablate_seeds_runs_each_mode_per_seed(tiny_catalogue, tmp_path, monkeypatch, capsys):
    from esr_tf.cli import main
    from esr_tf.models.builder import TINY_MODEL
    from esr_tf.training import ablate as module

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 16, "model": TINY_MODEL}))
    monkeypatch.setattr(module, "load_training_data", lambda config: tiny_catalogue)  # the session's shop
    calls, train = [], module.train

    def recording_train(config, *, features, **kwargs):
        calls.append((config.model.fusion, config.seed, features is not None))
        return train(config, features=features, **kwargs)

    monkeypatch.setattr(module, "train", recording_train)
    out = tmp_path / "abl"
    argv = ["ablate", "--config", str(config), "--out", str(out), "--modes", "text_only,concat", "--seeds", "0,1"]
    assert main(argv) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [(r["fusion"], r["seed"]) for r in result["runs"]] == [
        ("text_only", 0), ("concat", 0), ("text_only", 1), ("concat", 1)
    ]
    # text_only runs first for every seed (seed 1 reuses seed 0's text features), so its features
    # are gone before a photo mode's are built (#33: peak memory of a multi-seed ablate).
    assert calls == [("text_only", 0, False), ("text_only", 1, True), ("concat", 0, False), ("concat", 1, False)]
    for run in result["runs"]:
        folder = out / run["fusion"] / f"seed_{run['seed']}"
        assert json.loads((folder / "config.json").read_text())["seed"] == run["seed"]
        assert "macro_f1_ci95" in json.loads((folder / "metrics.json").read_text())
        assert 0 <= run["train_accuracy"] <= 1  # the last epoch's, next to test (#29)
    (concat,) = result["differences"]
    assert concat["fusion"] == "concat" and concat["versus"] == "text_only"
    assert len(concat["macro_f1"]["per_seed"]) == 2 and len(concat["ndcg@10"]["ci95"]) == 2
    printed = capsys.readouterr().out
    assert "best single modality by mean macro-F1: text_only" in printed
    with pytest.raises(SystemExit):
        main(["ablate", "--seeds", "0,x"])


def test_cli_ablate_on_several_catalogues_scores_valid(tmp_path, monkeypatch, capsys):
    """#29 item 1: `--data A,B --split valid`: one ablation per catalogue, quality.json / .md with
    cross-attention against concat, the training accuracy and the mean over catalogues. The
    per-catalogue `ablate` is faked here (its runs are the test above)."""
    from esr_tf.cli import main
    from esr_tf.training import quality

    calls = []

    def fake_ablate(config, modes, *, seeds, split, overwrite, verbose):
        calls.append((config.data, config.out_dir, modes, split))
        rng = np.random.default_rng(len(calls))
        q = np.repeat(np.arange(20), 4)
        y = rng.choice(4, size=q.size)
        runs, stats = [], {}
        for mode, accuracy in zip(modes, (0.6, 0.8), strict=True):
            report, stats[mode, 0] = _run(y, q, accuracy, rng)
            runs.append({"fusion": mode, "seed": 0, "epochs": 1, "train_accuracy": accuracy, **report})
        result = {**summarise(runs, stats, resamples=50), "runs": runs, "split": split}
        Path(config.out_dir).mkdir(parents=True)
        (Path(config.out_dir) / "ablation.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(quality, "ablate", fake_ablate)
    out = tmp_path / "quality"
    argv = ["ablate", "--out", str(out), "--data", "demo,shop_b/", "--modes", "concat,cross_attention",
            "--split", "valid"]
    assert main(argv) == 0
    assert [(d, Path(o).name, m, s) for d, o, m, s in calls] == [
        ("demo", "demo", ("concat", "cross_attention"), "valid"),
        ("shop_b/", "shop_b", ("concat", "cross_attention"), "valid"),
    ]
    result = json.loads((out / "quality.json").read_text())
    assert list(result["catalogues"]) == ["demo", "shop_b"] and result["split"] == "valid"
    for name, one in result["catalogues"].items():
        assert one["split"] == "valid" and (out / name / "ablation.json").is_file()
        (pair,) = one["differences"]
        assert (pair["fusion"], pair["versus"]) == ("cross_attention", "concat")
    assert result["mean_train_accuracy"] == {"concat": 0.6, "cross_attention": 0.8}
    assert set(result["mean_macro_f1"]) == {"concat", "cross_attention"}
    printed = capsys.readouterr().out
    assert "## Mean over catalogues" in printed and "valid split" in printed

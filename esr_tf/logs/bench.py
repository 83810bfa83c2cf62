"""`esr-tf bench --suite logs`: training from simulated search logs, judged against human labels.

Per seed, on a judged catalogue (the demo shop unless `data` names one): `simulate_logs` writes
`sessions` sessions at `eta` from the train and valid queries (seeded), then three relevance
models train with the defaults and that seed (retrieval off: only the re-ranker is compared) and
are scored on the catalogue's judged test split, which the logs never show:

- `labels`: trained on the human judgments (the ceiling);
- `uncorrected`: trained on the logs' weak labels from raw rates (`log_labels.correct=false`);
- `rules`: corrected rates, the rules' label alone per pair (`log_labels.labels=rules`);
- `corrected`: corrected rates, each pair as its posterior (the default of `train --logs`);

and the logging ranker itself (the simulator's noisy truth, grade + N(0, noise^2)) is scored on
the same test lists, its nDCG@10 the mean over 20 draws. Intervals are the query bootstrap of
`esr-tf ablate`, paired (same resampled queries for every model, averaged over seeds). Also: the
EM propensities against the simulator's truth, and the share of the way from the logging ranker
to `labels` that `corrected` goes, per seed.

`memory`: peak RSS of `esr-tf train --logs` (1 epoch) from 100,000 and 1,000,000 impressions,
each in a child process, with the load average.

Results go to `<out>/logs.json` and `<out>/logs.md`.

Example:
>>> result = run_logs_bench("esr_bench", seeds=(0,))  # doctest: +SKIP
>>> result["summary"]["corrected"]["ndcg@10"]["mean"]  # doctest: +SKIP
0.95
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from esr_tf.bench.timing import load_average, machine_info
from esr_tf.data import generate_demo_shop, load_catalogue
from esr_tf.logs.simulate import GRADE, simulate_logs
from esr_tf.training.bootstrap import percentile_interval
from esr_tf.training.config import parse_config
from esr_tf.training.evaluate import predict_features
from esr_tf.training.metrics import query_stats
from esr_tf.training.trainer import train

MODELS = ("labels", "uncorrected", "rules", "corrected")
METRICS = ("ndcg@10", "macro_f1")
LOGGER_DRAWS = 20
RESAMPLES = 1000
MEMORY_SESSIONS = (10_000, 100_000)  # x 10 impressions


def _train_and_score(data: Path, out: Path, seed: int, model: str, logs: Path, epochs: int | None):
    """One model's `QueryStats` on the test split (cached in `<out>/stats.npz` by rerunning)."""
    overrides = [f"data={data}", f"seed={seed}", f"out_dir={out}", "retrieval.epochs=0"]
    overrides += [f"epochs={epochs}"] if epochs else []
    if model != "labels":
        overrides += [f"logs={logs}", f"log_labels.correct={'false' if model == 'uncorrected' else 'true'}",
                      f"log_labels.labels={'rules' if model == 'rules' else 'posterior'}"]
    result = train(parse_config(None, overrides), verbose=0, overwrite=True)
    columns = result.catalogue.columns("test", label_set=result.model.label_set)
    predicted = predict_features(result.model, result.features["test"])
    stats = query_stats(columns["query_id"], columns["label"], predicted["probabilities"], predicted["score"],
                        label_set=result.model.label_set)
    keras.backend.clear_session()
    return stats, columns


def _logger_samples(columns: dict, label_set, noise: float, seed: int) -> dict[str, np.ndarray]:
    """The logging ranker's resampled nDCG@10 on the test lists, averaged over its draws."""
    grade = np.array([GRADE[label_set.codes[i]] for i in columns["label"]], np.float64)
    rng = np.random.default_rng([seed, 11])
    draws = []
    for _ in range(LOGGER_DRAWS):
        scores = grade + noise * rng.standard_normal(len(grade))
        probabilities = np.eye(label_set.num_labels)[columns["label"]]  # no classes: macro-F1 not reported
        draws.append(query_stats(columns["query_id"], columns["label"], probabilities, scores,
                                 label_set=label_set).resample(RESAMPLES)["ndcg@10"])
    return {"ndcg@10": np.mean(draws, axis=0)}


def run_seed(data: Path, out: Path, seed: int, *, sessions: int, eta: float, noise: float,
             epochs: int | None) -> dict:
    """Simulate, train the three models, score them: per-seed values and bootstrap samples."""
    catalogue = load_catalogue(data, missing_images="no_image")
    logs_dir = out / f"logs_seed{seed}"
    info = simulate_logs(catalogue, logs_dir, sessions=sessions, eta=eta, noise=noise, seed=seed)
    samples, values = {}, {}
    for model in MODELS:
        stats, columns = _train_and_score(data, out / f"{model}_seed{seed}", seed, model,
                                          logs_dir / "impressions.csv", epochs)
        samples[model] = stats.resample(RESAMPLES)
        values[model] = {m: float(stats.metrics()[m][0]) for m in METRICS}
    samples["logging ranker"] = _logger_samples(columns, catalogue.label_set, noise, seed)
    values["logging ranker"] = {"ndcg@10": float(samples["logging ranker"]["ndcg@10"].mean())}
    estimated = json.loads((out / f"corrected_seed{seed}" / "weak_labels.json").read_text())["propensities"]
    error = float(np.max(np.abs(np.array(estimated[:10]) - np.array(info["propensities"][:10]))))
    return {"seed": seed, "values": values, "samples": samples, "propensity_max_error": error}


def _spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4),
            "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None}


def summarise(runs: list[dict]) -> dict:
    """Mean ± sd over seeds with the paired query-bootstrap intervals, and the differences."""
    names = [*MODELS, "logging ranker"]
    summary = {}
    for name in names:
        summary[name] = {m: {**_spread([r["values"][name][m] for r in runs]),
                             "ci95": percentile_interval(np.mean([r["samples"][name][m] for r in runs], axis=0))}
                         for m in METRICS if m in runs[0]["values"][name]}
    differences = []
    pairs = (("corrected", "logging ranker"), ("corrected", "uncorrected"), ("corrected", "rules"),
             ("corrected", "labels"))
    for a, b in pairs:
        for m in METRICS:
            if m not in runs[0]["values"][b]:
                continue
            per_seed = [r["values"][a][m] - r["values"][b][m] for r in runs]
            paired = np.mean([r["samples"][a][m] - r["samples"][b][m] for r in runs], axis=0)
            differences.append({"model": a, "versus": b, "metric": m, **_spread(per_seed),
                                "per_seed": [round(d, 4) for d in per_seed], "ci95": percentile_interval(paired)})
    ndcg = [{name: r["values"][name]["ndcg@10"] for name in names} for r in runs]
    # where the logging ranker is as good as `labels` there is no way to go: no share
    share = [(v["corrected"] - v["logging ranker"]) / (v["labels"] - v["logging ranker"])
             if v["labels"] > v["logging ranker"] else float("nan") for v in ndcg]
    return {"summary": summary, "differences": differences,
            "share_of_the_way": {**_spread(share), "per_seed": [round(s, 4) for s in share]},
            "propensity_max_error": [round(r["propensity_max_error"], 4) for r in runs]}


_CHILD = ("import resource, sys; from esr_tf.cli import main; code = main(sys.argv[1:]); "
          "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def memory(data: Path, out: Path, eta: float, noise: float) -> list[dict]:
    """Peak RSS of `esr-tf train --logs` (1 epoch) per log size, each in a child process."""
    catalogue = load_catalogue(data, missing_images="no_image")
    rows = []
    for sessions in MEMORY_SESSIONS:
        logs = out / f"memory_logs_{sessions}"
        simulate_logs(catalogue, logs, sessions=sessions, eta=eta, noise=noise, seed=0)
        args = ["train", "--data", str(data), "--logs", str(logs / "impressions.csv"), "--out",
                str(out / f"memory_run_{sessions}"), "--epochs", "1", "--set", "retrieval.epochs=0", "--overwrite"]
        done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"memory run with {sessions} sessions failed:\n{done.stderr[-2000:]}")
        peak = int(done.stdout.rsplit("peak_rss_kb", 1)[1].split()[0])
        rows.append({"impressions": sessions * 10, "peak_rss_mb": round(peak / 1024, 1), "load": load_average()})
    return rows


def run_logs_bench(out: str | Path, *, quick: bool = False, data: str | None = None, seeds: tuple[int, ...] = (0, 1, 2),
                   sessions: int = 20_000, eta: float = 1.0, noise: float = 1.0) -> dict:
    """Runs the suite (module docstring); `quick`: one seed, 3 epochs, no memory runs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(data) if data else generate_demo_shop(out / "demo_shop", seed=0)
    seeds, epochs = (seeds[:1], 3) if quick else (seeds, None)
    load_before = load_average()
    runs = [run_seed(folder, out, s, sessions=sessions, eta=eta, noise=noise, epochs=epochs) for s in seeds]
    result = {"data": str(data or "demo shop"), "seeds": list(seeds), "sessions": sessions, "eta": eta,
              "noise": noise, "epochs": epochs or "default", **summarise(runs),
              "per_seed": [{"seed": r["seed"], "values": r["values"]} for r in runs],
              "memory": [] if quick else memory(folder, out, eta, noise),
              "load_before": load_before, "load_after": load_average(), "machine": machine_info()}
    (out / "logs.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "logs.md").write_text(markdown(result))
    return result


def _cell(stat: dict, signed: bool = False) -> str:
    sign = "+" if signed else ""
    sd = f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else ""
    low, high = stat["ci95"]
    return f"{stat['mean']:{sign}.3f}{sd} [{low:{sign}.3f}, {high:{sign}.3f}]"


def markdown(result: dict) -> str:
    """`logs.md`: the models' test figures, the paired differences, propensities and memory."""
    lines = [f"# Training from search logs: {result['data']}, {result['sessions']:,} sessions, eta {result['eta']}, "
             f"logging-ranker noise {result['noise']}, seeds {result['seeds']}", "",
             "mean ± sd over seeds [95 % paired query-bootstrap interval], judged test split", "",
             "| model | nDCG@10 | macro-F1 |", "|---|---|---|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {_cell(row['ndcg@10'])} | {_cell(row['macro_f1']) if 'macro_f1' in row else '—'} |")
    lines += ["", "| difference | metric | mean ± sd [95 %] | per seed |", "|---|---|---|---|"]
    for d in result["differences"]:
        lines.append(f"| {d['model']} − {d['versus']} | {d['metric']} | {_cell(d, True)} | {d['per_seed']} |")
    share = result["share_of_the_way"]
    lines += ["", f"Share of the way from the logging ranker to `labels` (nDCG@10): {share['mean']:.2f} "
              f"(per seed {share['per_seed']}).",
              f"Largest error of the EM propensities, positions 1-10: {result['propensity_max_error']}."]
    for row in result["memory"]:
        lines.append(f"- train --logs, {row['impressions']:,} impressions: peak RSS {row['peak_rss_mb']:,} MB "
                     f"(load {row['load']})")
    lines += ["", f"Load average before / after: {result['load_before']} / {result['load_after']}.",
              "Re-run: `esr-tf bench --suite logs [--data CATALOGUE] --out DIR`.", ""]
    return "\n".join(lines)

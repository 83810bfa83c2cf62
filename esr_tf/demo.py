"""`esr-tf demo`: the whole path on the built-in demo shop, offline.

generate the demo shop -> fine-tune the fused model (offline pretrained MiniLM-L6 + Lite0)
-> evaluate (metrics.json + plots) -> export for TF Serving -> verify the export -> print where
everything is and a ready-to-send TF Serving request.

Example:
>>> summary = run_demo("esr_out")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from esr_tf.training.config import parse_config
from esr_tf.training.metrics import INTERVAL_METRICS, format_intervals


def run_demo(
    out_dir: str | Path = "esr_out",
    *,
    size: str = "default",
    epochs: int | None = None,
    random_init: bool = False,
    overrides: list[str] | None = None,
    cpp: bool = True,
    verbose: int = 1,
    overwrite: bool = False,
    show_signatures: bool = False,
) -> dict:
    """Runs the demo; returns a summary dict (also written to `<out_dir>/demo_summary.json`).

    `overwrite`: start afresh in `out_dir` when it holds a run of other settings (see `train`).
    `show_signatures`: print the export's `saved_model_cli show` listing after verify's checks.
    """
    from esr_tf.training.evaluate import evaluate_model
    from esr_tf.training.trainer import train

    start = time.perf_counter()
    out = Path(out_dir)
    config = _demo_config(out, size, epochs, random_init, overrides)
    result = train(config, overwrite=overwrite, verbose=verbose)
    trained = time.perf_counter()
    print("evaluating on the test split", flush=True)
    report = evaluate_model(
        result.model,
        result.catalogue,
        split="test",
        out_dir=out,
        history=result.history,
        features=result.features.get("test"),
    )
    base = out / "serving_models"
    export_dir, verification = _export_and_verify(result.model, base, cpp, show_signatures)
    request = _sample_request(result.catalogue, result.model.preprocessor.product_fields)
    summary = {
        "macro_f1": report["macro_f1"],
        "accuracy": report["accuracy"],
        "ndcg@10": report["ndcg@10"],
        "mrr": report["mrr"],
        **{f"{k}_ci95": report[f"{k}_ci95"] for k in INTERVAL_METRICS},
        "verify_ok": verification["ok"],
        "seconds_total": round(time.perf_counter() - start, 1),
        "seconds_training": round(trained - start, 1),
        "epochs_run": result.epochs_run,
        "model": str(result.model_path),
        "metrics": str(out / "metrics.json"),
        "plots": [
            str(out / n)
            for n in ("confusion_matrix.png", "training_curves.png", "predictions.png", "attention.png")
            if (out / n).exists()
        ],
        "export": str(export_dir),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "request.json").write_text(json.dumps(request))
    _print_summary(summary, out, base)
    return summary


def _demo_config(out: Path, size: str, epochs: int | None, random_init: bool, overrides: list[str] | None):
    """The `TrainConfig` of the demo: the demo shop of `size`, plus the caller's overrides."""
    settings = [f"out_dir={out}", f"demo_size={size}"] + (overrides or [])
    if epochs is not None:
        settings.append(f"epochs={epochs}")
    if random_init:
        settings += ["model.text_weights=random", "model.image_weights=random"]
    return parse_config({"data": "demo"}, settings)


def _export_and_verify(model, base: Path, cpp: bool, show_signatures: bool = False) -> tuple[Path, dict]:
    """The next version under `<base>/esr`, verified like TF Serving loads it (report printed)."""
    from esr_tf.export.saved_model import export_saved_model, next_version
    from esr_tf.export.verify import format_report, verify_export

    print("exporting the SavedModel", flush=True)
    export_dir = export_saved_model(model, base, model_name="esr", version=next_version(base / "esr"))
    print(f"verifying {export_dir} (a TF + TF-Text-only process{', the C++ loader' if cpp else ''})", flush=True)
    verification = verify_export(export_dir, cpp=cpp)
    print(format_report(verification, signatures=show_signatures))
    return export_dir, verification


def _sample_request(catalogue, model_fields: tuple[str, ...]) -> dict:
    """A ready-to-send TF Serving REST request: the first test example, with the product fields
    the model reads."""
    from esr_tf.serving.requests import rest_predict_body

    test = catalogue.columns("test")
    fields = {f: [str(test[f][0])] for f in model_fields if f != "title"}
    return rest_predict_body(
        [str(test["query"][0])], [str(test["title"][0])], [_read(test["image"][0])], fields=fields
    )


def _read(path: str) -> bytes:
    return Path(path).read_bytes() if path else b""


def _print_summary(summary: dict, out: Path, base: Path) -> None:
    print(
        f"""
esr-tf demo finished in {summary["seconds_total"]:.0f} s (training {summary["seconds_training"]:.0f} s)
  test {format_intervals(summary, ("macro_f1", "accuracy"))}
       {format_intervals(summary, ("ndcg@10", "mrr"))}
  model      {summary["model"]}
  metrics    {summary["metrics"]}
  plots      {", ".join(summary["plots"])}
  export     {summary["export"]}  (verify: {"PASS" if summary["verify_ok"] else "FAIL"})

Serve it with TF Serving (see export/README.md):
  docker run -p 8500:8500 -p 8501:8501 -v "{base.resolve()}:/models" -e MODEL_NAME=esr tensorflow/serving:2.20.0
and send the ready-made request:
  curl -s -X POST localhost:8501/v1/models/esr:predict -d @{out / "request.json"}"""
    )

"""`esr-tf ablate`: the same split and budget for each fusion mode, one table.

Example:
>>> rows = ablate(parse_config({"demo_size": "tiny", "epochs": 1}))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from esr_tf.training.config import TrainConfig
from esr_tf.training.evaluate import evaluate_model
from esr_tf.training.trainer import load_training_data, train

ABLATION_MODES = ("text_only", "image_only", "concat", "cross_attention")
COLUMNS = ("accuracy", "micro_f1", "macro_f1", "ndcg@10", "mrr")


def ablate(
    config: TrainConfig, modes: tuple[str, ...] = ABLATION_MODES, *, verbose: int = 0,
    overwrite: bool = False,
) -> list[dict]:
    """Trains and evaluates each mode on `config`'s data; writes ablation.json / ablation.md.

    Modes with the same encoders share one pass of the frozen backbones (`concat` and
    `cross_attention`; `text_only` reads no photo, `image_only`'s BERT sees only the query).
    """
    out = Path(config.out_dir)
    catalogue = load_training_data(config)
    rows = []
    shared: dict = {}  # the latest frozen-backbone outputs with photos, for the next mode
    for mode in modes:
        run = TrainConfig(
            **{
                **config.__dict__,
                "out_dir": str(out / mode),
                "model": config.model.replace(fusion=mode),
            }
        )
        result = train(run, catalogue=catalogue, features=shared or None, verbose=verbose, overwrite=overwrite)
        if mode != "text_only":  # text_only's leave the photos out
            shared = result.features
        report = evaluate_model(
            result.model, catalogue, split="test", out_dir=out / mode, features=result.features.get("test")
        )
        rows.append(
            {"fusion": mode, "epochs": result.epochs_run, **{k: report[k] for k in COLUMNS}}
        )
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    (out / "ablation.md").write_text(markdown_table(rows) + "\n")
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| fusion | epochs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for r in rows:
        lines.append(
            f"| {r['fusion']} | {r['epochs']} | "
            + " | ".join(f"{r[k]:.3f}" for k in COLUMNS)
            + " |"
        )
    return "\n".join(lines)

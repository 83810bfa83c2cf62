"""PNG plots for evaluation and training: confusion matrix, training curves, prediction and
attention grids.

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`, no
`pyplot`), chosen inside each function: nothing changes the global matplotlib backend, so a
notebook's inline backend keeps working, and importing `esr_tf` never imports matplotlib.

Example:
>>> import os, tempfile
>>> from esr_tf.training.plots import plot_confusion_matrix
>>> path = plot_confusion_matrix([[5, 1], [2, 7]], ["exact", "irrelevant"],
...                              os.path.join(tempfile.mkdtemp(), "cm.png"))
>>> path.stat().st_size > 0
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_CORRECT, _WRONG = "#1a7f37", "#cf222e"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_confusion_matrix(
    confusion,
    label_names: Sequence[str],
    path,
    *,
    normalize: bool = True,
    title: str = "",
) -> Path:
    """Heat map of a confusion matrix (rows = true, columns = predicted) as a PNG.

    Each cell shows its count; with `normalize` also its share of the true class (row %), and
    the colours follow that share (so rare classes stay readable). Rows without examples show
    0 %.

    Example:
    >>> import os, tempfile
    >>> p = plot_confusion_matrix([[3, 0], [1, 4]], ["E", "I"],
    ...                           os.path.join(tempfile.mkdtemp(), "cm.png"), normalize=False)
    >>> p.suffix
    '.png'
    """
    counts = np.asarray(confusion, dtype=np.float64)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(
            f"confusion: expected shape ({n}, {n}) for labels {list(label_names)}, "
            f"got {counts.shape}"
        )
    if np.any(~np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("confusion: counts must be finite and >= 0")
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    shown = shares if normalize else counts

    size = 2.0 + 1.1 * n
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot()
    vmax = 1.0 if normalize else max(float(counts.max()), 1.0)
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(n), labels=list(label_names), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(label_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or ("confusion matrix (row %)" if normalize else "confusion matrix"))
    for i in range(n):
        for j in range(n):
            text = f"{int(round(counts[i, j]))}"
            if normalize:
                text += f"\n{100.0 * shares[i, j]:.1f}%"
            dark = shown[i, j] > 0.6 * vmax
            axes.text(
                j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black"
            )
    figure.tight_layout()
    return _save(figure, path)


def plot_training_curves(history: dict[str, list[float]], path) -> Path:
    """One subplot per metric of a Keras history: `x` and `val_x` share a subplot.

    `history` is `model.fit(...).history` (a `History` object is accepted too). Keys with only a
    `val_` side or no training counterpart get their own subplot; empty series are skipped.

    Example:
    >>> import os, tempfile
    >>> h = {"loss": [1.0, 0.7], "val_loss": [1.1, 0.9], "macro_f1": [0.3, 0.5]}
    >>> plot_training_curves(h, os.path.join(tempfile.mkdtemp(), "curves.png")).exists()
    True
    """
    history = getattr(history, "history", history)
    if not isinstance(history, dict):
        raise TypeError(f"history: expected a dict of lists, got {type(history).__name__}")
    series = {str(key): [float(v) for v in values] for key, values in history.items()}
    series = {key: values for key, values in series.items() if values}
    if not series:
        raise ValueError("history: no metric has any value to plot")
    groups: list[list[str]] = []
    for key in series:
        base = key[4:] if key.startswith("val_") else key
        if key.startswith("val_") and base in series:
            continue  # drawn with its training counterpart
        groups.append([key] + ([f"val_{key}"] if f"val_{key}" in series else []))
    # "loss" first, the rest in history order.
    groups.sort(key=lambda group: group[0] != "loss")

    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = _figure(4.2 * columns, 3.2 * rows)
    for index, group in enumerate(groups):
        axes = figure.add_subplot(rows, columns, index + 1)
        for key in group:
            values = series[key]
            epochs = range(1, len(values) + 1)
            axes.plot(
                epochs,
                values,
                marker="o" if len(values) < 30 else None,
                markersize=3,
                linestyle="--" if key.startswith("val_") else "-",
                label=key,
            )
        axes.set_title(group[0].removeprefix("val_"))
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _photo_grid(rows: list[dict], columns: int, cell_inches: tuple[float, float]):
    """A figure of `columns`-wide cells, one per row: `(figure, [(axes, photo or None, row)])`."""
    columns = min(columns, len(rows))
    grid_rows = math.ceil(len(rows) / columns)
    figure = _figure(cell_inches[0] * columns, cell_inches[1] * grid_rows)
    cells = [(*_photo_cell(figure, (grid_rows, columns, i + 1), row), row) for i, row in enumerate(rows)]
    return figure, cells


def _photo_cell(figure, position: tuple[int, int, int], row: dict):
    """A grid cell without ticks and the row's photo thumbnail, or a grey "no image" tile (None)."""
    axes = figure.add_subplot(*position)
    axes.set_xticks([])
    axes.set_yticks([])
    photo = _load_thumbnail(str(row.get("image_path") or ""))
    if photo is None:
        axes.imshow(np.full((224, 224, 3), 200, dtype=np.uint8))
        axes.text(112, 112, "no image", ha="center", va="center", color="#555555", fontsize=12)
    return axes, photo


def _load_thumbnail(image_path: str, size: int = 224):
    """RGB thumbnail as an array, or None when the file is missing or unreadable."""
    if not image_path:
        return None
    try:
        from PIL import Image

        with Image.open(image_path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except (OSError, ValueError):
        return None  # a broken photo must not stop the report: show the placeholder


def _shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_prediction_grid(rows: list[dict], path, *, columns: int = 4) -> Path:
    """Grid of product photos with the query, title and predicted label of each example.

    Each row is `{"query", "title", "image_path" (or ""), "true", "pred", "score"}`; the caption
    shows `pred` in green when it equals `true` (compared as case-insensitive strings, so use
    one spelling for both) and red otherwise. A missing or unreadable photo becomes a grey
    "no image" tile.

    Example:
    >>> import os, tempfile
    >>> rows = [{"query": "usb cable", "title": "USB-C cable 1 m", "image_path": "",
    ...          "true": "exact", "pred": "exact", "score": 0.93}]
    >>> plot_prediction_grid(rows, os.path.join(tempfile.mkdtemp(), "grid.png")).exists()
    True
    """
    if not rows:
        raise ValueError("plot_prediction_grid: rows is empty")
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    required = ("query", "true", "pred")
    for index, row in enumerate(rows):
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"rows[{index}] lacks {missing} (has {sorted(row)})")

    figure, cells = _photo_grid(rows, columns, (3.2, 3.9))
    for axes, photo, row in cells:
        if photo is not None:
            axes.imshow(photo)
        true, pred = str(row["true"]), str(row["pred"])
        correct = true.strip().lower() == pred.strip().lower()
        score = row.get("score")
        score_text = f" ({float(score):.2f})" if score is not None else ""
        axes.set_title(
            f"q: {_shorten(row['query'], 30)}\n{_shorten(row.get('title', ''), 34)}", fontsize=8
        )
        axes.set_xlabel(
            f"pred: {pred}{score_text} | true: {true}",
            fontsize=8,
            color=_CORRECT if correct else _WRONG,
            fontweight="bold",
        )
        for spine in axes.spines.values():
            spine.set_edgecolor(_CORRECT if correct else _WRONG)
            spine.set_linewidth(2.5)
    figure.tight_layout()
    return _save(figure, path)


def _overlay_attention(axes, photo, attention) -> None:
    """`attention` ([h, w], any scale) as a heat map stretched over `photo` (bilinear)."""
    attention = np.asarray(attention, dtype=np.float64)
    peak = attention.max()
    heat = attention / peak if peak > 0 else attention
    height, width = photo.shape[:2]
    axes.imshow(photo)
    axes.imshow(heat, cmap="inferno", alpha=0.55, vmin=0.0, vmax=1.0, interpolation="bilinear",
                extent=(-0.5, width - 0.5, height - 0.5, -0.5))


def plot_attention_grid(rows: list[dict], path, *, columns: int = 3) -> Path:
    """Photos with the attention of the query's words overlaid, next to predicted vs true label.

    Each row is `{"query", "title", "image_path" (or ""), "attention" ([h, w]: the query words'
    mean attention over the patch grid, e.g. from `RelevanceModel.explain`), "true", "pred"}`.
    The heat map is scaled to its own maximum (the share left to the "no image" token varies);
    a missing photo gets a grey tile and no map.

    Example:
    >>> import os, tempfile
    >>> rows = [{"query": "red mug", "title": "Red mug", "image_path": "", "attention": np.eye(5),
    ...          "true": "exact", "pred": "exact"}]
    >>> plot_attention_grid(rows, os.path.join(tempfile.mkdtemp(), "attention.png")).exists()
    True
    """
    if not rows:
        raise ValueError("plot_attention_grid: rows is empty")
    figure, cells = _photo_grid(rows, columns, (3.4, 4.0))
    for axes, photo, row in cells:
        if photo is not None:
            _overlay_attention(axes, photo, row["attention"])
        true, pred = str(row["true"]), str(row["pred"])
        colour = _CORRECT if true.strip().lower() == pred.strip().lower() else _WRONG
        axes.set_title(f"q: {_shorten(row['query'], 30)}\n{_shorten(row.get('title', ''), 34)}", fontsize=8)
        axes.set_xlabel(f"pred: {pred} | true: {true}", fontsize=8, color=colour, fontweight="bold")
    figure.suptitle("attention of the query's words over the photo (last fusion block)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)

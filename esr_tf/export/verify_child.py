"""Runs in a fresh process that imports only tensorflow + tensorflow_text, as TF Serving would.

Usage: python verify_child.py EXPORT_DIR < ops.json. Prints one JSON report on stdout. Standalone
on purpose: neither esr_tf nor keras_hub may be needed to load and run the export. The op types
given on stdin are first looked up with tensorflow alone (before TF-Text registers its ops), so
one process answers both "which ops are not stock TF" and "does it load and run".
"""

import json
import sys

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry


def main(export_dir: str, ops: list[str]) -> dict:
    not_stock = sorted(op for op in ops if op_def_registry.get(op) is None)
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops the graph uses)

    ref = np.load(f"{export_dir}/assets.extra/esr_tf_reference.npz", allow_pickle=True)
    loaded = tf.saved_model.load(export_dir)
    inputs = {k.split("/", 1)[1]: ref[k] for k in ref.files if k.startswith("input/")}
    report = {"signatures": sorted(loaded.signatures.keys()), "checks": [], "non_stock_ops": not_stock}

    def compare(signature: str, outputs: dict, expected_prefix: str) -> None:
        for name, value in outputs.items():
            key = f"{expected_prefix}/{name}"
            if key not in ref.files:
                continue
            got, want = value.numpy(), ref[key]
            if got.dtype == object or want.dtype.kind in "SOU":
                ok = got.shape == want.shape and [
                    g.decode() if isinstance(g, bytes) else g for g in got.ravel().tolist()
                ] == [w.decode() if isinstance(w, bytes) else w for w in want.ravel().tolist()]
                diff = 0.0 if ok else float("inf")
            else:
                diff = (
                    float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                    if got.size
                    else 0.0
                )
                ok = got.shape == want.shape and diff <= 1e-4
            report["checks"].append(
                {"signature": signature, "output": name, "max_abs_diff": diff, "ok": bool(ok)}
            )

    strings = {
        k: tf.constant(v.astype(bytes) if v.dtype.kind == "U" else v) for k, v in inputs.items()
    }
    serve = loaded.signatures["serving_default"](**strings)
    compare("serving_default", serve, "serving_default")
    emb = loaded.signatures["embed_images"](image=strings["image"])
    compare("embed_images", emb, "embed_images")
    text = {k: v for k, v in strings.items() if k != "image"}  # query and the product fields
    cached = loaded.signatures["score_with_image_features"](
        **text, image_tokens=emb["image_tokens"], has_image=emb["has_image"]
    )
    compare("score_with_image_features", cached, "serving_default")
    if "explain" in loaded.signatures:  # only models with cross-attention have it
        compare("explain", loaded.signatures["explain"](**strings), "explain")
    for name in sorted({k.split("/")[1] for k in ref.files if k.startswith("call/")}):
        out = loaded.signatures[name](**_call_inputs(ref, name))
        compare(name, out, f"call/{name}/output")
        if "product_ids" in out:  # a search answer: k distinct catalogue products per row
            distinct = all(len(set(row)) == len(row) for row in out["product_ids"].numpy().tolist())
            report["checks"].append({"signature": name, "output": "product_ids distinct",
                                     "max_abs_diff": 0.0, "ok": distinct})
    report["modules"] = {m: m in sys.modules for m in ("keras_hub", "keras_nlp", "esr_tf")}
    report["ok"] = all(c["ok"] for c in report["checks"]) and not any(report["modules"].values())
    return report


def _call_inputs(ref, name: str) -> dict:
    """Inputs of a stored `call/<name>/input/<arg>` call (strings as UTF-8 bytes, ints as int32)."""
    prefix = f"call/{name}/input/"
    args = {}
    for key in (k for k in ref.files if k.startswith(prefix)):
        value = ref[key]
        kind = value.dtype.kind
        if kind in "UO":
            value = [v.encode("utf-8") if isinstance(v, str) else v for v in value.tolist()]
        args[key[len(prefix):]] = tf.constant(value)
    return args


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.stdin.read() or "[]"))))

"""`esr-tf bench --suite scale`: does training memory stay flat as the catalogue grows? (#17)

For synthetic catalogues of 10k, 50k and 200k judged pairs (synthetic queries and titles; a few
photos shared by many products, as on a marketplace where sellers reuse stock photos), one
`esr-tf train` epoch runs in a fresh process with its frozen-backbone outputs in a
`FeatureStore` on disk, and this process records that child's peak RSS (`wait4`), the store's
bytes per pair and the examples per second of the feature pass and of training (the whole
`fit`, tracing, validation and checkpoints included). At the smallest size the same epoch also
runs with the outputs in RAM (`BackboneFeatures`: its peak RSS and whole-`fit` speed), and one
more process trains the same head from both, rounds alternating, so that the store's speed per
example is compared side by side, in steady state: at 10k pairs ~60 % of one epoch's `fit` is
fixed cost, which swings the whole-`fit` ratio by ±0.2 between runs. One more in-RAM run with
`MANY_PHOTOS` distinct photos gives the in-RAM photo table's peak RSS per 1,000 photos.

Results go to `<out>/scale.json` (`{"rows": [{"pairs", "peak_rss_gb", "store_bytes_per_pair",
"feature_pass_ex_s", "train_ex_s"}, ...], ...}`) and `<out>/scale.md`, with the load average.

Example:
>>> result = run_scale_bench("esr_bench", quick=True)  # doctest: +SKIP
>>> [row["pairs"] for row in result["rows"]]  # doctest: +SKIP
[2000, 10000]
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from esr_tf.bench.timing import StepTimer, load_average, machine_info

SIZES = {False: (10_000, 50_000, 200_000), True: (2_000, 10_000)}
TARGETS = {"peak_rss_growth": "<= 1.10", "store_bytes_per_pair": "<= 16384",
           "store_vs_fixed_length_ram_train_ex_s": ">= 1.0", "store_vs_ram_train_ex_s": "~1.0 (same batching)"}
PHOTOS = 24
# The in-RAM photo table's memory: the smallest size again with this many distinct photos
# ({quick: ...}); the peak RSS difference to the 24-photo run, per 1,000 photos.
MANY_PHOTOS = {False: 2_000, True: 300}
# The side-by-side speed comparison: rounds per source and steps per round ({quick: ...}); the
# first steps of each round (a fresh iterator fills its shuffle buffer) are not timed.
SPEED_ROUNDS = {False: (4, 200), True: (2, 30)}
SKIP_STEPS = 5
_WORDS = ("red blue green black white grey navy wool cotton leather suede running trail rain winter summer kids "
          "men women slim classic waterproof sneaker sock cap hoodie jacket boot sandal mug teapot bottle "
          "backpack case headphones charger cable lamp desk chair pillow towel").split()


def _photos(folder: Path, count: int, rng: np.random.Generator) -> list[str]:
    """`count` small JPEG photos (noise over a colour), written once and shared by products."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        base = rng.integers(0, 255, size=3)
        pixels = np.clip(base + rng.normal(0, 40, size=(96, 96, 3)), 0, 255).astype(np.uint8)
        name = f"images/photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=85)
        names.append(name)
    return names


def synthetic_catalogue(folder: str | Path, pairs: int, *, seed: int = 0, per_query: int = 10,
                        photos: int = PHOTOS) -> Path:
    """A catalogue folder with `pairs` judged pairs: `pairs / per_query` queries, one product
    per pair (a title of 6-12 synthetic words, brand and colour), `photos` shared photos."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    photos = _photos(folder, photos, rng)
    words = np.array(_WORDS)
    with open(folder / "products.csv", "w", newline="") as p, open(folder / "examples.csv", "w", newline="") as e:
        products, examples = csv.writer(p), csv.writer(e)
        products.writerow(["product_id", "title", "brand", "color", "image"])
        examples.writerow(["query_id", "query", "product_id", "label", "split"])
        for q in range(-(-pairs // per_query)):
            # a number keeps queries distinct: a query may not appear in two splits
            query = " ".join([*rng.choice(words, size=rng.integers(2, 5)), str(q)])
            split = ("train",) * 8 + ("valid", "test")
            for j in range(min(per_query, pairs - q * per_query)):
                pid = f"p{q:06d}_{j:02d}"
                title = " ".join(rng.choice(words, size=rng.integers(6, 13)))
                image = photos[rng.integers(len(photos))] if rng.random() < 0.9 else ""
                products.writerow([pid, title, f"brand{rng.integers(50)}", rng.choice(words[:7]), image])
                examples.writerow([f"q{q:06d}", query, pid, "ESCI"[rng.integers(4)], split[q % 10]])
    return folder


_SETS = ["epochs=1", "retrieval.epochs=0", "early_stopping_patience=0"]


def _child_command(data: Path, run: Path, store: str, overrides: list[str]) -> list[str]:
    sets = [*_SETS, f"feature_store={store}", *overrides]
    code = (
        "import json, sys; from esr_tf.training.config import parse_config; "
        "from esr_tf.training.trainer import train; "
        "r = train(parse_config({'data': sys.argv[1], 'out_dir': sys.argv[2]}, sys.argv[3:]), verbose=0); "
        "print('SCALE ' + json.dumps({**r.seconds, 'train': len(r.catalogue.select('train'))}))"
    )
    return [sys.executable, "-c", code, str(data), str(run), *sets]


def compare_training_speed(data: str, out_dir: str, store: str, overrides: list[str], rounds: int,
                           steps: int) -> dict:
    """Examples per second of the same compiled head trained from `store`, from RAM and from RAM
    with every batch at the full sequence length (the in-RAM cache before batches were cut to
    their longest text), in one process: `rounds` rounds of `steps` steps each, the order
    rotating; the train step is traced before the first timed round. Runs in the child
    `_speed_command` starts."""
    from dataclasses import replace

    from esr_tf.training import trainer
    from esr_tf.training.config import parse_config

    config = parse_config({"data": data, "out_dir": out_dir}, [*_SETS, f"feature_store={store}", *overrides])
    strategy, config, catalogue = trainer.prepare_run(config, None, overwrite=True)
    trainee = trainer.build_trainee(config, catalogue, strategy)
    in_ram = replace(config, feature_store="")
    store_features = trainer.backbone_features(config, trainee, None, verbose=0)
    ram_features = trainer.backbone_features(in_ram, trainee, None, verbose=0)  # one pass for both RAM sources
    sources = {
        "store": trainer.training_datasets(config, trainee, store_features, strategy)[0],
        "ram": trainer.training_datasets(in_ram, trainee, ram_features, strategy)[0],
        "fixed_length_ram": trainer.training_datasets(in_ram, trainee, ram_features, strategy, full_length=True)[0],
    }
    for ds in sources.values():  # traces the step for each input signature
        trainee.fitted.fit(ds, epochs=1, steps_per_epoch=SKIP_STEPS + 2, verbose=0, shuffle=False)
    rates: dict[str, list[float]] = {name: [] for name in sources}
    names = list(sources)
    for r in range(rounds):
        for name in names[r % 3:] + names[: r % 3]:
            timer = StepTimer()
            trainee.fitted.fit(sources[name], epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer],
                               shuffle=False)
            rates[name].append(timer.steps_per_second(skip=SKIP_STEPS) * config.batch_size)
    result = {f"{name}_ex_s": v for name, v in rates.items()}
    for ref in ("ram", "fixed_length_ram"):
        ratios = [s / r for s, r in zip(rates["store"], rates[ref], strict=True)]
        result[f"ratios_vs_{ref}"] = ratios
        result[f"ratio_vs_{ref}"] = float(np.median(ratios))
    return {**result, "steps_per_round": steps, "timed_from_step": SKIP_STEPS}


def _speed_command(data: Path, run: Path, store: Path, overrides: list[str], quick: bool) -> list[str]:
    rounds, steps = SPEED_ROUNDS[quick]
    code = (
        "import json, sys; from esr_tf.bench.scale import compare_training_speed as c; "
        "r = c(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[6:], int(sys.argv[4]), int(sys.argv[5])); "
        "print('SCALE ' + json.dumps(r))"
    )
    return [sys.executable, "-c", code, str(data), str(run), str(store), str(rounds), str(steps), *overrides]


def run_scale_bench(
    out_dir: str | Path,
    quick: bool = False,
    *,
    overrides: list[str] | None = None,
    sizes: tuple[int, ...] | None = None,
    photo_memory: bool = True,
) -> dict:
    """Measures every size (`SIZES[quick]` unless `sizes`); writes `scale.json` and `scale.md`.

    `overrides`: `--set` strings for the training runs, e.g. `["model.text=tiny"]`;
    `photo_memory`: also the in-RAM run with `MANY_PHOTOS` photos (one more training process).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    loads = [load_average()]
    rows, ram = [], None
    for pairs in sizes or SIZES[quick]:
        data = synthetic_catalogue(out / f"scale_{pairs}", pairs)
        store = out / f"scale_{pairs}" / "features"
        child = _measured(_child_command(data, out / f"run_{pairs}", str(store), overrides), out / f"run_{pairs}.log")
        stored = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        rows.append({"pairs": pairs, "peak_rss_gb": child["peak_rss_gb"], "store_bytes_per_pair": stored / pairs,
                     "feature_pass_ex_s": pairs / child["features"], "train_ex_s": child["train"] / child["fit"]})
        if ram is None:  # the reference: the same epoch with the outputs in RAM, then both side by side
            ram = _measured(_child_command(data, out / f"run_{pairs}_ram", "", overrides), out / f"run_{pairs}_ram.log")
            ram = {"pairs": pairs, "peak_rss_gb": ram["peak_rss_gb"], "train_ex_s": ram["train"] / ram["fit"]}
            speed = _measured(_speed_command(data, out / f"run_{pairs}_speed", store, overrides, quick),
                              out / f"run_{pairs}_speed.log")
            speed = {"pairs": pairs, **{k: v for k, v in speed.items() if k != "peak_rss_gb"}}
            if photo_memory:
                ram["rss_gb_per_1000_photos"] = _photo_memory(out, pairs, overrides, MANY_PHOTOS[quick], ram)
        loads.append(load_average())
    result = {
        "rows": rows,
        "in_ram_reference": ram,
        "side_by_side": speed,
        "figures": {
            "peak_rss_growth": rows[-1]["peak_rss_gb"] / rows[0]["peak_rss_gb"],
            "store_bytes_per_pair": max(r["store_bytes_per_pair"] for r in rows),
            "store_vs_fixed_length_ram_train_ex_s": speed["ratio_vs_fixed_length_ram"],
            "store_vs_ram_train_ex_s": speed["ratio_vs_ram"],
        },
        "whole_fit_store_vs_ram": rows[0]["train_ex_s"] / ram["train_ex_s"],
        "targets": TARGETS,
        "load_average": loads,
        "machine": machine_info(),
        "overrides": overrides,
    }
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    (out / "scale.md").write_text(_markdown(result))
    return result


def _photo_memory(out: Path, pairs: int, overrides: list[str], photos: int, ram: dict) -> float:
    """Peak RSS per 1,000 distinct photos of an in-RAM run (`BackboneFeatures`' photo table),
    from the same run with `photos` instead of `PHOTOS` photos."""
    data = synthetic_catalogue(out / f"scale_{pairs}_photos", pairs, photos=photos)
    many = _measured(_child_command(data, out / f"run_{pairs}_photos", "", overrides), out / f"run_{pairs}_photos.log")
    return (many["peak_rss_gb"] - ram["peak_rss_gb"]) / (photos - PHOTOS) * 1000


def _measured(command: list[str], log: Path) -> dict:
    """Runs one training process: its timings and peak RSS in GB (`wait4`; Linux `ru_maxrss` is
    in KiB). Output goes to files, not pipes, so that TensorFlow's logs cannot block the child."""
    with open(log, "w") as err, open(log.with_suffix(".out"), "w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"scale bench: the training process failed ({log}): {' | '.join(tail)}")
    line = next(x for x in text.splitlines() if x.startswith("SCALE "))
    return {**json.loads(line[6:]), "peak_rss_gb": usage.ru_maxrss / 2**20}


def _markdown(result: dict) -> str:
    lines = ["| pairs | peak RSS (GB) | store bytes / pair | feature pass ex/s | train ex/s |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['pairs']:,} | {r['peak_rss_gb']:.2f} | {r['store_bytes_per_pair']:,.0f} | "
                     f"{r['feature_pass_ex_s']:.0f} | {r['train_ex_s']:.0f} |")
    ram, speed = result["in_ram_reference"], result["side_by_side"]
    lines += ["", f"In RAM at {ram['pairs']:,} pairs: peak RSS {ram['peak_rss_gb']:.2f} GB, train "
              f"{ram['train_ex_s']:.0f} ex/s (whole fit; store / RAM {result['whole_fit_store_vs_ram']:.2f})"
              + (f"; {ram['rss_gb_per_1000_photos']:.2f} GB more per 1,000 distinct photos."
                 if "rss_gb_per_1000_photos" in ram else "."),
              "", f"Side by side, {speed['steps_per_round']} steps a round, ex/s: "
              + "; ".join(f"{name.replace('_', ' ')} {', '.join(f'{v:.0f}' for v in speed[f'{name}_ex_s'])}"
                          for name in ("store", "ram", "fixed_length_ram"))
              + "; store / RAM " + ", ".join(f"{v:.3f}" for v in speed["ratios_vs_ram"])
              + f" (median {speed['ratio_vs_ram']:.3f}); store / fixed-length RAM "
              + ", ".join(f"{v:.3f}" for v in speed["ratios_vs_fixed_length_ram"])
              + f" (median {speed['ratio_vs_fixed_length_ram']:.3f}).",
              "", "| figure | value | target |", "|---|---|---|"]
    for name, value in result["figures"].items():
        lines.append(f"| {name} | {value:.3f} | {result['targets'][name]} |")
    lines += ["", f"Load average (1 / 5 / 15 min) before and after each size: {result['load_average']}"]
    return "\n".join(lines) + "\n"

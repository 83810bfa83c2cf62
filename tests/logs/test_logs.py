"""Search logs (#32 items 1-2): the log format's checks, the simulator, the propensity estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esr_tf.data import load_catalogue
from esr_tf.logs.propensity import estimate_propensities
from esr_tf.logs.read import COLUMNS, LogError, aggregate_logs, read_logs
from esr_tf.logs.simulate import simulate_logs

HEADER = ",".join(COLUMNS)
PRODUCTS = {"p1", "p2", "p3"}


def _log(tmp_path, *rows: str, header: str = HEADER):
    path = tmp_path / "logs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("rows, message", [
    (["s1,red mug,p9,1,0,0,0"], r"row 1, column 'product_id': unknown product 'p9'"),
    (["s1,red mug,p1,0,0,0,0"], r"row 1, column 'position': expected an integer >= 1, got '0'"),
    (["s1,red mug,p1,1.5,0,0,0"], r"row 1, column 'position': expected an integer"),
    (["s1,red mug,p1,1,2,0,0"], r"row 1, column 'clicked': expected an integer 0..1, got '2'"),
    (["s1,red mug,p1,1,0,0,1"], r"row 1, column 'purchased': purchased = 1 without a click"),
    (["s1,red mug,p1,1,0,1,0"], r"row 1, column 'added_to_cart': added_to_cart = 1 without a click"),
    (["s1,red mug,p1,1,0,0,0", "s1,red mug,p2,1,0,0,0"], r"row 2, column 'position': position 1 twice in session 's1'"),
    (["s1,mug,p1,1,0,0,0", "s2,mug,p1,1,0,0,0", "s1,mug,p2,2,0,0,0"],
     r"row 3, column 'session_id': session 's1' appears again after other sessions"),
    (["s1,,p1,1,0,0,0"], r"row 1, column 'query': empty"),
])
def test_a_bad_row_is_refused_naming_file_row_and_column(tmp_path, rows, message):
    path = _log(tmp_path, *rows)
    with pytest.raises(LogError, match=message) as error:
        list(read_logs(path, PRODUCTS))
    assert str(path) in str(error.value)


def test_a_missing_column_is_named(tmp_path):
    path = _log(tmp_path, "s1,red mug,p1,1,0,0", header=HEADER.rsplit(",", 1)[0])
    with pytest.raises(LogError, match=r"header: missing column\(s\) \['purchased'\]"):
        list(read_logs(path, PRODUCTS))


def test_csv_jsonl_and_parquet_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [["s1", "red mug", "p1", 1, 1, 1, 0], ["s1", "red mug", "p2", 2, 0, 0, 0], ["s2", "mug", "p1", 1, 1, 0, 0]]
    csv_path = _log(tmp_path, *(",".join(map(str, r)) for r in rows), header=HEADER.upper())  # names: any case
    jsonl = tmp_path / "logs.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(COLUMNS, r, strict=True))) + "\n" for r in rows))
    parquet = tmp_path / "logs.parquet"
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)})
    pq.write_table(table.set_column(4, "clicked", pa.array([bool(r[4]) for r in rows])), parquet)  # booleans too
    read = [[(r.session_id, r.product_id, r.position, r.clicked, r.added_to_cart) for r in read_logs(p, PRODUCTS)]
            for p in (csv_path, jsonl, parquet)]
    assert read[0] == read[1] == read[2] == [("s1", "p1", 1, 1, 1), ("s1", "p2", 2, 0, 0), ("s2", "p1", 1, 1, 0)]
    counts = aggregate_logs(parquet, PRODUCTS)
    assert (counts.rows, counts.sessions, int(counts.clicks.sum()), int(counts.carts.sum())) == (3, 2, 2, 1)
    assert len(counts.impressions) == 3, "one entry per (query, product, position)"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """40 queries, each with 2 exact, 3 substitute, 1 complement and 2 irrelevant judged products."""
    root = tmp_path_factory.mktemp("shop")
    products = [f"p{i:03d}" for i in range(200)]
    (root / "products.csv").write_text("product_id,title\n" + "".join(f"{p},Product {p}\n" for p in products))
    rng = np.random.default_rng(1)
    lines = ["query,product_id,label,split"]
    for q in range(40):
        chosen = rng.choice(products, 8, replace=False)
        for p, label in zip(chosen, "EESSSCII", strict=True):
            lines.append(f"query {q},{p},{label},{'test' if q >= 35 else 'train'}")
    (root / "examples.csv").write_text("\n".join(lines) + "\n")
    return load_catalogue(root)


def test_simulated_logs_read_back_and_give_the_true_propensities(shop, tmp_path):
    """#32 Done-when (its propensity half): the EM estimate within 0.05 of the simulator's truth
    at positions 1-10 (here 8,000 sessions of a small shop; the demo shop's 20,000 in the docs)."""
    info = simulate_logs(shop, tmp_path, sessions=8000, eta=1.0, seed=3)
    assert info["propensities"][:3] == pytest.approx([1.0, 0.5, 1 / 3])
    assert info["queries"] == 35, "the test split's queries are not shown: they judge the models"
    counts = aggregate_logs(tmp_path / "impressions.csv", set(shop.products))
    assert counts.rows == 8000 * 10 and counts.sessions == 8000
    assert (counts.carts <= counts.clicks).all() and (counts.purchases <= counts.carts).all()
    estimate = estimate_propensities(counts)
    assert len(estimate) == 10
    assert np.abs(estimate - np.array(info["propensities"])).max() < 0.05, estimate.round(3)


def test_simulator_refuses_bad_settings(shop, tmp_path):
    for kwargs, message in (({"sessions": 0}, "sessions must be >= 1"), ({"eta": float("nan")}, "eta must be")):
        with pytest.raises(LogError, match=message):
            simulate_logs(shop, tmp_path, **kwargs)
    with pytest.raises(LogError, match="no judged query in split"):
        simulate_logs(shop, tmp_path, splits=("valid",))


def test_cli_simulates_and_estimates_and_refuses_a_bad_log(shop, tmp_path, capsys):
    from esr_tf.cli import main

    out = tmp_path / "logs"
    assert main(["simulate-logs", "--data", str(shop.root), "--out", str(out), "--sessions", "500"]) == 0
    assert main(["logs", "--data", str(shop.root), "--logs", str(out / "impressions.csv")]) == 0
    printed = capsys.readouterr().out
    assert "5,000 impressions in 500 sessions" in printed and "simulated truth" in printed
    bad = _log(tmp_path, "s1,query 1,p001,1,0,0,1")
    assert main(["logs", "--data", str(shop.root), "--logs", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1, column 'purchased'" in err[0]

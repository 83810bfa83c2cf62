"""`esr-tf prepare`: a catalogue's splits as TFRecord shards that read back example for example."""

from __future__ import annotations

import numpy as np

from esr_tf import cli


def test_prepare_writes_shards_that_read_back(tiny_catalogue, tmp_path, capsys):
    from esr_tf.preprocessing.tfrecords import read_tfrecords

    out = tmp_path / "shards"
    assert cli.main(["prepare", "--data", str(tiny_catalogue.root), "--out", str(out), "--shards", "2"]) == 0
    assert "train:" in capsys.readouterr().out
    for split in ("train", "valid", "test"):
        columns = tiny_catalogue.columns(split)
        rows = list(read_tfrecords(out / split / "*.tfrecord").as_numpy_iterator())
        assert len(rows) == len(columns["label"]) and len(list((out / split).glob("*.tfrecord"))) == 2
        # Shards interleave rows; compare as sorted (query, title, label) triples.
        read = sorted((x["query"].decode(), x["title"].decode(), int(y)) for x, y in rows)
        triples = zip(map(str, columns["query"]), map(str, columns["title"]), map(int, columns["label"]), strict=True)
        expected = sorted(triples)
        assert read == expected
        assert sum(len(x["image"]) > 0 for x, _ in rows) == int(np.sum(columns["image"] != ""))


def test_prepare_refuses_a_non_empty_out_without_overwrite(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["prepare", "--data", str(tiny_catalogue.root), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli.main(["prepare", "--data", str(tiny_catalogue.root), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()

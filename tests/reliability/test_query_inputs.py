"""Query identity (#18 item 7): queries the model reads alike are one query (one id, one
split), and one `query_id` never stands for two different queries."""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import pytest
from reliability.helpers import make_catalogue

from esr_tf.data import CatalogueError, load_catalogue
from esr_tf.data.catalogue import derive_query_id, hash_split, normalize_query

NFC = unicodedata.normalize("NFC", "crème brûlée")
NFD = unicodedata.normalize("NFD", "crème brûlée")
EQUIVALENT = {
    "nfc_nfd": (NFC, NFD),
    "full_width": ("RED MUG", "ＲＥＤ ＭＵＧ"),
    "case_and_spaces": ("Red  Mug", "red mug"),
    "zero_width_space": ("red\u200bmug", "red mug"),
    "ligature": ("ﬁne china", "fine china"),
}


def _examples(*rows: dict) -> list[dict]:
    return [{"product_id": f"p{i + 1}", "label": "E", **row} for i, row in enumerate(rows)]


@pytest.mark.parametrize("case", list(EQUIVALENT))
def test_equivalent_queries_share_id_and_split(tmp_path, case):
    a, b = EQUIVALENT[case]
    assert NFC != NFD and normalize_query(a) == normalize_query(b)
    root = make_catalogue(tmp_path / "cat", examples=_examples({"query": a}, {"query": b}))
    first, second = load_catalogue(root).examples
    assert first.query_id == second.query_id == derive_query_id(a)
    assert first.split == second.split == hash_split(b)


@pytest.mark.parametrize("case", ["nfc_nfd", "full_width"])
def test_equivalent_queries_in_two_given_splits_are_refused(tmp_path, case):
    a, b = EQUIVALENT[case]
    rows = _examples({"query": a, "split": "train"}, {"query": b, "split": "test"})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(tmp_path / "cat", examples=rows))
    msg = str(err.value)
    assert "examples.csv, row 2, column 'split'" in msg and "row 1" in msg, msg


@pytest.mark.parametrize("case", list(EQUIVALENT))
def test_the_tokenizer_reads_equivalent_queries_alike(case):
    # The reason for the rule: the model cannot tell these texts apart.
    from esr_tf.models.backbones.text_backbone import load_text_backbone
    from esr_tf.models.builder import TINY_TEXT

    _, tokenizer = load_text_backbone(TINY_TEXT, weights="random")
    a, b = EQUIVALENT[case]
    ids = [np.asarray(tokenizer(text)).tolist() for text in (a, b, normalize_query(a))]
    assert ids[0] == ids[1] == ids[2], ids


def test_one_query_id_for_two_queries_is_refused(tmp_path):
    rows = _examples({"query": "red mug", "query_id": "q1"}, {"query": "blue mug", "query_id": "q1"})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(tmp_path / "cat", examples=rows))
    msg = str(err.value)
    assert "examples.csv, row 2, column 'query_id'" in msg and "row 1" in msg, msg
    assert "'red mug'" in msg and "'blue mug'" in msg, msg


def test_one_query_id_for_equivalent_spellings_is_fine(tmp_path):
    rows = _examples({"query": NFC, "query_id": "q1"}, {"query": NFD, "query_id": "q1"})
    cat = load_catalogue(make_catalogue(tmp_path / "cat", examples=rows))
    assert {e.query_id for e in cat.examples} == {"q1"}


def test_query_ids_differing_only_by_normalisation_are_refused(tmp_path):
    rows = _examples({"query": "red mug", "query_id": "Q1"}, {"query": "red mug", "query_id": "Ｑ1"})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(tmp_path / "cat", examples=rows, fmt="jsonl"))
    msg = str(err.value)
    assert "examples.jsonl, line 2, field 'query_id'" in msg and "Unicode normalisation" in msg


def test_ascii_query_ids_are_unchanged():
    # Derived ids (and hash splits) of plain ASCII queries are what they were before.
    assert normalize_query("  Red   Sneaker ") == "red sneaker"
    assert derive_query_id("Red Sneaker") == "q" + hashlib.sha256(b"red sneaker").hexdigest()[:12]

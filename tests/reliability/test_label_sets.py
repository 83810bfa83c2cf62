"""A custom `model.label_set` (issue #18, item 1): labels are read with the model's label set.

The catalogue numbers its labels in its own label set (ESCI unless a loader was given another);
`train` and `evaluate` number them as the model's outputs, by name (or code). A catalogue label
that the model's set lacks is refused in one line naming it, before any training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from esr_tf.data import CatalogueError
from esr_tf.labels import ESCI, LabelSet

REVERSED = LabelSet(("irrelevant", "complement", "substitute", "exact"), ("I", "C", "S", "E"),
                    (0.0, 0.01, 0.1, 1.0))
THREE = LabelSet(("exact", "substitute", "complement"), ("E", "S", "C"), (1.0, 0.1, 0.01))


def test_columns_number_labels_as_the_given_label_set(tiny_catalogue):
    esci = tiny_catalogue.columns("train")["label"]
    reordered = tiny_catalogue.columns("train", label_set=REVERSED)["label"]
    assert set(esci.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(reordered, 3 - esci)  # exact 0 -> 3, irrelevant 3 -> 0
    np.testing.assert_array_equal(tiny_catalogue.columns("train", label_set=ESCI)["label"], esci)


def test_label_the_model_lacks_is_refused_naming_it(tiny_catalogue):
    with pytest.raises(CatalogueError) as err:
        tiny_catalogue.columns("test", label_set=THREE)
    message = str(err.value)
    assert "irrelevant (I)" in message and "exact (E), substitute (S), complement (C)" in message
    assert "\n" not in message


def test_label_set_refuses_a_spelling_naming_two_labels():
    with pytest.raises(ValueError, match="names two labels"):
        LabelSet(("exact", "other"), ("E", "exact"), (1.0, 0.0))


def _cli_config(tmp_path, tiny_config, tiny_catalogue, label_set: LabelSet):
    path = tmp_path / "config.json"
    config = tiny_config.to_dict()
    config.update(data=str(tiny_catalogue.root), out_dir=str(tmp_path / "run"), epochs=1)
    config["model"]["label_set"] = label_set.get_config()
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_cli_train_with_a_reordered_label_set_learns_labels_by_name(tiny_config, tiny_catalogue,
                                                                    tmp_path):
    from esr_tf.cli import main

    config = _cli_config(tmp_path, tiny_config, tiny_catalogue, REVERSED)
    assert main(["train", "--config", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    support = {name: c["support"] for name, c in report["per_class"].items()}
    assert support == tiny_catalogue.label_counts("test")  # "exact" rows counted as exact


def test_cli_train_with_a_label_set_lacking_a_catalogue_label_exits_2(tiny_config, tiny_catalogue,
                                                                     tmp_path, capsys):
    from esr_tf.cli import main

    config = _cli_config(tmp_path, tiny_config, tiny_catalogue, THREE)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'I'" in err and "exact/substitute/complement" in err and "\n" not in err, err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_evaluate_a_three_label_model_on_an_esci_catalogue_exits_2(tiny_catalogue, tmp_path,
                                                                   capsys):
    from esr_tf.cli import main
    from esr_tf.models.builder import TINY_MODEL, build_relevance_model
    from esr_tf.training.evaluate import evaluate_model

    model = build_relevance_model(**TINY_MODEL, label_set=THREE.get_config())
    with pytest.raises(CatalogueError, match=r"irrelevant \(I\)"):
        evaluate_model(model, tiny_catalogue, split="test")
    model.save(tmp_path / "three.keras")
    code = main(["evaluate", "--model", str(tmp_path / "three.keras"), "--data",
                 str(tiny_catalogue.root), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'I'" in err and "\n" not in err, err

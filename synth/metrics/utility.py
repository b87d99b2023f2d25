"""Utility: train-on-synthetic-test-on-real (TSTR) against train-on-real-test-on-real (TRTR),
and the gain from adding synthetic data to the real training set.

The same fixed recipe (`classifier`) is fitted three times as parallel Ray tasks, streaming
their data from Ray Datasets; the TRTR model is returned to serve as the feature extractor.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.data

from synth.metrics import classifier


@ray.remote(num_cpus=1)
def _fit_and_score(train: ray.data.Dataset, test: ray.data.Dataset, shape: tuple[int, int, int],
                   num_classes: int, epochs: int, seed: int, keep_model: bool):
    import torch

    torch.set_num_threads(1)
    model = classifier.fit(train, shape, num_classes, epochs, seed)
    result = classifier.scores(classifier.confusion(model, test, num_classes))
    return result, (model.state_dict() if keep_model else None)


def utility(real_train: ray.data.Dataset, real_test: ray.data.Dataset, synthetic: ray.data.Dataset,
            shape: tuple[int, int, int], num_classes: int, epochs: int, seed: int) -> tuple[dict[str, Any], Any]:
    """TSTR/TRTR/augmentation scores (keys as in `metrics.json`) and the TRTR model."""
    columns = ["image", "label"]
    real_train, synthetic, real_test = (d.select_columns(columns) for d in (real_train, synthetic, real_test))
    # Inputs may be sorted by class (class folders, generated sets): one seeded global
    # shuffle, then the per-epoch local shuffle mixes every batch.
    mixed = {name: d.random_shuffle(seed=seed).materialize() for name, d in
             (("synthetic", synthetic), ("real", real_train), ("both", real_train.union(synthetic)))}
    refs = {name: _fit_and_score.remote(d, real_test, shape, num_classes, epochs, seed, name == "real")
            for name, d in mixed.items()}
    (tstr, _), (trtr, state), (both, _) = ray.get([refs["synthetic"], refs["real"], refs["both"]])
    model = classifier.build(shape[2], shape[0], shape[1], num_classes)
    model.load_state_dict(state)
    return {
        "tstr_accuracy": tstr["accuracy"], "trtr_accuracy": trtr["accuracy"],
        "tstr_ratio": tstr["accuracy"] / max(trtr["accuracy"], 1e-12),
        "tstr_macro_f1": tstr["macro_f1"], "trtr_macro_f1": trtr["macro_f1"],
        "augment_accuracy": both["accuracy"], "augment_gain": both["accuracy"] - trtr["accuracy"],
        "tstr_per_class_recall": tstr["per_class_recall"], "trtr_per_class_recall": trtr["per_class_recall"],
    }, model.eval()

"""Utility: train-on-synthetic-test-on-real (TSTR) against train-on-real-test-on-real (TRTR),
and the gain from adding synthetic data to the real training set.

The same fixed recipe (`classifier`) is fitted in Ray tasks on arrays shared through the
object store — on real, on synthetic and (with `augment`) on both — and the TRTR model is
returned to serve as the feature extractor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from synth.metrics import classifier
from synth.metrics.classifier import Split


@ray.remote(num_cpus=1)
def _fit_and_score(test: Split, num_classes: int, epochs: int, seed: int, real: Split, synthetic: Split,
                   fits: tuple[str, ...], recipe: str) -> dict[str, tuple[dict[str, Any], Any]]:
    import torch

    torch.set_num_threads(1)
    parts = {"real": [real], "synthetic": [synthetic], "both": [real, synthetic]}
    results = {}
    for name in fits:
        images = np.concatenate([part[0] for part in parts[name]])
        labels = np.concatenate([part[1] for part in parts[name]])
        model = classifier.fit(images, labels, num_classes, epochs, seed, recipe)
        probs = classifier.embed(model, test[0])["probs"]
        results[name] = (classifier.scores(classifier.confusion(probs, test[1], num_classes)),
                         model.state_dict() if name == "real" else None)
    return results


def utility(real_train: Split, real_test: Split, synthetic: Split, num_classes: int, epochs: int,
            seed: int, recipe: str = "auto", augment: bool = True) -> tuple[dict[str, Any], Any]:
    """TSTR/TRTR (and with `augment` the real+synthetic) scores, keys as in `metrics.json`, and
    the TRTR model.

    With `augment`, two tasks of equal work: real-only then synthetic-only, and real+synthetic;
    without, one task each for real-only and synthetic-only (the run's evaluation then takes as
    long as the synthetic fit instead of both).
    """
    refs = [ray.put(split) for split in (real_test, real_train, synthetic)]
    results = {}
    tasks = (("real", "synthetic"), ("both",)) if augment else (("real",), ("synthetic",))
    for part in ray.get([_fit_and_score.remote(refs[0], num_classes, epochs, seed, refs[1], refs[2], fits, recipe)
                         for fits in tasks]):
        results.update(part)
    (tstr, _), (trtr, state) = results["synthetic"], results["real"]
    height, width, channels = real_train[0].shape[1:]
    model = classifier.build(channels, height, width, num_classes, recipe)
    model.load_state_dict(state)
    scores = {
        "tstr_accuracy": tstr["accuracy"], "trtr_accuracy": trtr["accuracy"],
        "tstr_ratio": tstr["accuracy"] / max(trtr["accuracy"], 1e-12),
        "tstr_macro_f1": tstr["macro_f1"], "trtr_macro_f1": trtr["macro_f1"],
        "tstr_per_class_recall": tstr["per_class_recall"], "trtr_per_class_recall": trtr["per_class_recall"],
    }
    if augment:
        both = results["both"][0]
        scores.update(augment_accuracy=both["accuracy"], augment_gain=both["accuracy"] - trtr["accuracy"])
    return scores, model.eval()

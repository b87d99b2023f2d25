"""Utility: train-on-synthetic-test-on-real (TSTR) against train-on-real-test-on-real (TRTR),
and the gain from adding synthetic data to the real training set.

The same fixed recipe (`classifier`) is fitted three times in Ray tasks on arrays shared
through the object store; the TRTR model is returned to serve as the feature extractor.
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
            seed: int, recipe: str = "auto") -> tuple[dict[str, Any], Any]:
    """TSTR/TRTR/augmentation scores (keys as in `metrics.json`) and the TRTR model.

    Two tasks of equal work: real-only then synthetic-only, and real+synthetic.
    """
    refs = [ray.put(split) for split in (real_test, real_train, synthetic)]
    results = {}
    for part in ray.get([_fit_and_score.remote(refs[0], num_classes, epochs, seed, refs[1], refs[2], fits, recipe)
                         for fits in (("real", "synthetic"), ("both",))]):
        results.update(part)
    (tstr, _), (trtr, state), (both, _) = results["synthetic"], results["real"], results["both"]
    height, width, channels = real_train[0].shape[1:]
    model = classifier.build(channels, height, width, num_classes, recipe)
    model.load_state_dict(state)
    return {
        "tstr_accuracy": tstr["accuracy"], "trtr_accuracy": trtr["accuracy"],
        "tstr_ratio": tstr["accuracy"] / max(trtr["accuracy"], 1e-12),
        "tstr_macro_f1": tstr["macro_f1"], "trtr_macro_f1": trtr["macro_f1"],
        "augment_accuracy": both["accuracy"], "augment_gain": both["accuracy"] - trtr["accuracy"],
        "tstr_per_class_recall": tstr["per_class_recall"], "trtr_per_class_recall": trtr["per_class_recall"],
    }, model.eval()

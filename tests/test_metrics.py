import numpy as np
from sklearn.metrics import f1_score

from synth.metrics.utility import scores


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 500)
    predicted = np.where(rng.random(500) < 0.7, truth, rng.integers(0, 4, 500))
    confusion = np.zeros((4, 4), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    result = scores(confusion)
    assert abs(result["accuracy"] - np.mean(truth == predicted)) < 1e-12
    assert abs(result["macro_f1"] - f1_score(truth, predicted, average="macro")) < 1e-12
    assert np.allclose(result["per_class_recall"], [np.mean(predicted[truth == k] == k) for k in range(4)])

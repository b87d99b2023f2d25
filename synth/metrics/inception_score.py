"""Inception-Score-style confidence and diversity: exp(E_x KL(p(y|x) || p(y))), computed
with the domain classifier instead of Inception (higher is better; at most the number of
classes)."""

from __future__ import annotations

import numpy as np


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    marginal = probs.mean(0)
    kl = (probs * (np.log(probs + eps) - np.log(marginal + eps))).sum(1)
    return float(np.exp(kl.mean()))

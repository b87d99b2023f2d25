"""The fixed classifiers the model labeler and label quality train: the small CNN of the
evaluation suite for images, HistGradientBoosting for tables. Both work on row indices of
the run's rows and hold those rows' features in memory (images: their pixels)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa


MIN_SAMPLES = 40_000
"""Images: train on at least this many samples (epochs × rows), so a few hundred labelled
rows still get enough optimiser steps (MNIST, 1,000 labelled: 40 epochs, 98.4 % of the
pseudo-labels at ≥ 0.95 confidence are right, 91.6 % coverage)."""


class ImageClassifier:
    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        from synth.metrics import classifier

        epochs = max(epochs, math.ceil(MIN_SAMPLES / max(len(train), 1)))
        model = classifier.fit(self.pixels[train], labels, num_classes, epochs, seed)
        return classifier.embed(model, self.pixels[rows])["probs"]


class TableClassifier:
    def __init__(self, table: pa.Table, kinds: dict[str, str], target: str):
        from synth.metrics.tabular import table_features

        self.columns = [c for c, k in kinds.items() if c != target and k != "id"]
        self.features, self.categorical = table_features(table, kinds, self.columns, table)

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        from synth.metrics.tabular import fixed_classifier

        model = fixed_classifier(self.categorical, seed).fit(self.features[train], labels)
        probs = np.zeros((len(rows), num_classes))
        probs[:, model.classes_] = model.predict_proba(self.features[rows])
        return probs

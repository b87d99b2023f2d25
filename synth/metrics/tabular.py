"""Tabular fidelity, utility and privacy, computed on whole tables (no subsampling).

- **Column shapes**: 1 − Kolmogorov–Smirnov statistic for numbers and datetimes, 1 − total
  variation distance for categories (null counts as a category).
- **Column-pair trends**: 1 − |Δ Pearson correlation| / 2 for two numeric columns;
  otherwise 1 − total variation distance of the joint distribution (numbers binned at
  the real data's deciles). `quality_score` is the mean of the two.
- **Detection**: ROC AUC of a classifier telling real from synthetic rows on a held-out
  half (0.5 = indistinguishable).
- **Utility**: one fixed recipe (scikit-learn HistGradientBoosting, native categoricals)
  trained on synthetic (TSTR) or real (TRTR) rows, tested on the real test split.
- **Privacy**: distance to the closest training record for synthetic and for held-out real
  rows (numbers min–max scaled, categories one-hot), and exact copies of training rows.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from synth.metrics.neighbours import nearest_distance
from synth.metrics.privacy import closest_record_figures

NUMERIC_KINDS = ("numeric", "datetime")
CATEGORY_KINDS = ("categorical", "boolean")


def numeric_values(column: pa.ChunkedArray, kind: str) -> np.ndarray:
    from synth.tabular import as_float

    return as_float(column, kind)


def category_values(column: pa.ChunkedArray) -> np.ndarray:
    return np.array(["\0null" if v is None else str(v) for v in column.to_pylist()], dtype=object)


def _tvd(a: np.ndarray, b: np.ndarray) -> float:
    values = np.unique(np.concatenate([a, b]))
    index = {v: i for i, v in enumerate(values)}
    pa_ = np.bincount([index[v] for v in a], minlength=len(values)) / max(len(a), 1)
    pb_ = np.bincount([index[v] for v in b], minlength=len(values)) / max(len(b), 1)
    return 0.5 * float(np.abs(pa_ - pb_).sum())


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return float(len(a) != len(b))
    return float(ks_2samp(a, b).statistic)


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="right").astype(object)
    bins[np.isnan(values)] = "null"
    return bins.astype(str)


def quality(real: pa.Table, synthetic: pa.Table, kinds: dict[str, str]) -> dict[str, Any]:
    columns = [c for c in real.column_names if kinds.get(c) in NUMERIC_KINDS + CATEGORY_KINDS]
    shapes, discrete = {}, {}
    numbers = {}
    for name in columns:
        if kinds[name] in NUMERIC_KINDS:
            a, b = numeric_values(real[name], kinds[name]), numeric_values(synthetic[name], kinds[name])
            numbers[name] = (a, b)
            shapes[name] = 1.0 - _ks(a, b)
            present = a[~np.isnan(a)]
            edges = np.unique(np.quantile(present, np.linspace(0.1, 0.9, 9))) if len(present) else np.array([])
            discrete[name] = (_binned(a, edges), _binned(b, edges))
        else:
            a, b = category_values(real[name]), category_values(synthetic[name])
            shapes[name] = 1.0 - _tvd(a, b)
            discrete[name] = (a, b)
    pairs = {}
    for x, y in combinations(columns, 2):
        if x in numbers and y in numbers:
            pairs[f"{x}|{y}"] = 1.0 - abs(_correlation(numbers[x][0], numbers[y][0])
                                          - _correlation(numbers[x][1], numbers[y][1])) / 2
        else:
            joint = [np.char.add(np.char.add(discrete[x][i].astype(str), "\x1f"), discrete[y][i].astype(str))
                     for i in (0, 1)]
            pairs[f"{x}|{y}"] = 1.0 - _tvd(*joint)
    shape_score = float(np.mean(list(shapes.values()))) if shapes else 1.0
    pair_score = float(np.mean(list(pairs.values()))) if pairs else 1.0
    return {"quality_score": (shape_score + pair_score) / 2, "column_shapes": shape_score,
            "column_pair_trends": pair_score, "column_shape_scores": shapes}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    if both.sum() < 2 or a[both].std() == 0 or b[both].std() == 0:
        return 0.0
    return float(np.corrcoef(a[both], b[both])[0, 1])


def table_features(table: pa.Table, kinds: dict[str, str], columns: list[str], reference: pa.Table):
    """A numeric matrix for HistGradientBoosting: numbers as floats (NaN kept), categories as
    codes of the reference table's categories (unknown → NaN), and the categorical mask."""
    matrix, categorical = [], []
    for name in columns:
        if kinds[name] in NUMERIC_KINDS:
            matrix.append(numeric_values(table[name], kinds[name]))
            categorical.append(False)
        else:
            known = {v: i for i, v in enumerate(np.unique(category_values(reference[name])))}
            matrix.append(np.array([known.get(v, np.nan) for v in category_values(table[name])], dtype=float))
            categorical.append(True)
    return np.stack(matrix, 1) if matrix else np.zeros((table.num_rows, 0)), np.array(categorical, bool)


def fixed_classifier(categorical: np.ndarray, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(categorical_features=categorical if categorical.any() else None,
                                          random_state=seed)


def utility(real_train: pa.Table, real_test: pa.Table, synthetic: pa.Table, kinds: dict[str, str], target: str,
            seed: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    columns = [c for c in real_train.column_names if c != target and kinds.get(c) in NUMERIC_KINDS + CATEGORY_KINDS]
    test_x, categorical = table_features(real_test, kinds, columns, real_train)
    test_y = category_values(real_test[target])
    scores = {}
    for name, train in (("tstr", synthetic), ("trtr", real_train)):
        x, _ = table_features(train, kinds, columns, real_train)
        y = category_values(train[target])
        if len(np.unique(y)) < 2:  # one class only: the recipe predicts it everywhere
            predicted = np.full(len(test_y), y[0] if len(y) else "")
        else:
            predicted = fixed_classifier(categorical, seed).fit(x, y).predict(test_x)
        scores[f"{name}_accuracy"] = float(accuracy_score(test_y, predicted))
        scores[f"{name}_f1"] = float(f1_score(test_y, predicted, average="macro"))
    scores["tstr_ratio"] = scores["tstr_accuracy"] / max(scores["trtr_accuracy"], 1e-12)
    scores["tstr_f1_ratio"] = scores["tstr_f1"] / max(scores["trtr_f1"], 1e-12)
    return scores


def detection_auc(real: pa.Table, synthetic: pa.Table, kinds: dict[str, str], seed: int) -> float:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    columns = [c for c in real.column_names if kinds.get(c) in NUMERIC_KINDS + CATEGORY_KINDS]
    x_real, categorical = table_features(real, kinds, columns, real)
    x_syn, _ = table_features(synthetic, kinds, columns, real)
    x = np.concatenate([x_real, x_syn])
    y = np.concatenate([np.zeros(len(x_real)), np.ones(len(x_syn))])
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    model = fixed_classifier(categorical, seed).fit(x_fit, y_fit)
    return float(roc_auc_score(y_held, model.predict_proba(x_held)[:, 1]))


def _scaled(table: pa.Table, kinds: dict[str, str], columns: list[str], reference: pa.Table) -> np.ndarray:
    """Numbers min–max scaled by the reference (null → −1), categories one-hot."""
    parts = []
    for name in columns:
        if kinds[name] in NUMERIC_KINDS:
            ref = numeric_values(reference[name], kinds[name])
            low, high = np.nanmin(ref), np.nanmax(ref)
            values = (numeric_values(table[name], kinds[name]) - low) / max(high - low, 1e-12)
            parts.append(np.nan_to_num(values, nan=-1.0)[:, None])
        else:
            known = np.unique(category_values(reference[name]))
            values = category_values(table[name])
            parts.append((values[:, None] == known[None, :]).astype(float))
    return np.concatenate(parts, 1).astype(np.float32)


def _row_key(row: dict[str, Any]) -> tuple:
    """A row's values with NaN as None, so missing numbers compare equal."""
    return tuple(None if isinstance(v, float) and v != v else v for v in row.values())


def privacy(real_train: pa.Table, real_test: pa.Table, synthetic: pa.Table, kinds: dict[str, str]) -> dict[str, Any]:
    columns = [c for c in real_train.column_names if kinds.get(c) in NUMERIC_KINDS + CATEGORY_KINDS]
    train = _scaled(real_train, kinds, columns, real_train)
    synthetic_dcr = nearest_distance(_scaled(synthetic, kinds, columns, real_train), train)
    holdout_dcr = nearest_distance(_scaled(real_test, kinds, columns, real_train), train)
    train_rows = {_row_key(row) for row in real_train.select(columns).to_pylist()}
    copies = sum(_row_key(row) in train_rows for row in synthetic.select(columns).to_pylist())
    return {**closest_record_figures(synthetic_dcr, holdout_dcr), "exact_copies": int(copies)}


def evaluate_table(real_train: pa.Table, real_test: pa.Table, synthetic: pa.Table, kinds: dict[str, str],
                   target: str, seed: int) -> dict[str, Any]:
    """Every tabular metric, keys as in `metrics.json`."""
    metrics = quality(real_train, synthetic, kinds)
    metrics["detection_auc"] = detection_auc(real_train, synthetic, kinds, seed)
    metrics.update(utility(real_train, real_test, synthetic, kinds, target, seed))
    metrics.update(privacy(real_train, real_test, synthetic, kinds))
    return metrics

"""Labels: labelers and label quality, decided on the driver over narrow per-row values.

The labelers of `annotate.labelers` run in order and each labels only the rows still
unlabelled: `column` (the given labels), `path` (a regex over the source path), `rules`
(labelling functions over table columns, combined by vote, abstaining on no vote or a tie)
and `model` (a classifier trained on the rows labelled so far gives the rest a pseudo-label
with its probability; below `min_confidence` a row goes to the review queue instead of being
guessed). Labels imported from a human review override all of them.

Label quality is confident learning: out-of-fold predicted probabilities from K folds,
per-class thresholds, a calibrated confident joint that estimates how many rows of each
label belong to each other class, and those rows flagged by margin (`confident_learning`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import SpecError
from pipeline.spec import AnnotateSpec, LabelerSpec, RuleSpec

SOURCES = ("given", "rule", "model", "human")
UNLABELLED_CLASS = "image"
"""The one class of an unlabelled dataset (internal: its published rows carry no label)."""
"""`label_source` values: from the label column, from a path/rules labeler, a model
pseudo-label, or a human review."""

PENDING_REVIEW = "annotate: sent to review"
"""The reason of a row waiting for a human label: counted apart from rejects (it comes back labelled)."""


@dataclass(frozen=True)
class LabelSet:
    """Class names and how raw label values map to class ids."""

    class_names: list[str]
    by_value: dict[str | int, int]


class Classifier(Protocol):
    """The fixed classifier of a modality, over row indices of the run's rows."""

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        """Class probabilities (len(rows), K) from a classifier trained on `train` rows."""


@dataclass
class Annotation:
    """Per-row labels (in source order) and what the report says about them."""

    class_names: list[str]
    label: np.ndarray  # int64 class id, -1 for none
    source: np.ndarray  # object: one of SOURCES, "" for none
    confidence: np.ndarray  # float32
    given: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # label before relabelling
    issue: np.ndarray | None = None  # bool, with label quality on
    suggested: np.ndarray | None = None  # int64, -1 where not scored
    review: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows sent to review
    review_guess: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    review_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    report: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """What goes to metrics.json (and can be gated on)."""
        quality = self.report.get("label_quality")
        if not quality:
            return {}
        return {"label_issues_flagged": quality["flagged"], "label_noise_estimate": quality["noise_estimate"]}

    @property
    def unlabelled(self) -> bool:
        return bool(self.report.get("unlabelled"))

    def summary(self) -> str:
        if self.unlabelled:
            return f"no labels: {int((self.label >= 0).sum()):,} images as one set (unconditional generation)"
        names = self.class_names
        line = f"{len(names)} classes: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}; labels from " + \
            ", ".join(f"{s} {n}" for s, n in self.report["label_sources"].items())
        if "pseudo_labels" in self.report:
            pseudo = self.report["pseudo_labels"]
            line += f"; pseudo-labelled {pseudo['labelled']} of {pseudo['unlabelled']}, {pseudo['to_review']} to review"
        if "label_quality" in self.report:
            quality = self.report["label_quality"]
            line += (f"; {quality['flagged']} likely mislabelled of {quality['scored']} "
                     f"(noise estimate {quality['noise_estimate']:.1%}, action {quality['action']})")
        return line


def needs_classifier(spec: AnnotateSpec) -> bool:
    return spec.label_quality is not None or any(labeler.type == "model" for labeler in spec.labelers)


def _rule_fires(rule: RuleSpec, column: pa.ChunkedArray) -> np.ndarray:
    value = rule.value
    if rule.op == "in":
        mask = pc.is_in(column, value_set=pa.array(value))
    elif rule.op == "contains":
        mask = pc.match_substring(column.cast(pa.string()), str(value))
    elif rule.op == "matches":
        mask = pc.match_substring_regex(column.cast(pa.string()), str(value))
    else:
        compare = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
                   ">=": pc.greater_equal}[rule.op]
        mask = compare(column, pa.scalar(value).cast(column.type) if not pa.types.is_string(column.type)
                       else pa.scalar(str(value)))
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)


def vote(labeler: LabelerSpec, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(label name or None, vote share) per row from the rules of one `rules` labeler."""
    names = sorted({rule.label for rule in labeler.rules})
    votes = np.zeros((table.num_rows, len(names)))
    for rule in labeler.rules:
        if rule.column not in table.column_names:
            raise SpecError(f"annotate.labelers: rule on '{rule.column}': no such column "
                            f"(columns: {', '.join(c for c in table.column_names if c != 'source_ref')})")
        try:
            fires = _rule_fires(rule, table[rule.column])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError):
            raise SpecError(f"annotate.labelers: rule '{rule.column} {rule.op} {rule.value!r}': the value does not fit "
                            f"column '{rule.column}' ({table[rule.column].type})") from None
        votes[:, names.index(rule.label)] += fires * (
            rule.weight if labeler.vote == "weighted" else 1.0)
    total = votes.sum(1)
    best = votes.argmax(1)
    top = votes.max(1)
    tie = (votes == top[:, None]).sum(1) > 1
    decided = (total > 0) & ~tie
    labels = np.array([names[b] if d else None for b, d in zip(best, decided)], dtype=object)
    return labels, np.where(decided, top / np.maximum(total, 1e-12), 0.0)


def path_labels(pattern: str, refs: list[str]) -> np.ndarray:
    compiled = re.compile(pattern)
    group = "label" if "label" in compiled.groupindex else 1
    found = [compiled.search(ref) for ref in refs]
    return np.array([m.group(group) if m and m.group(group) else None for m in found], dtype=object)


def _key(value: Any) -> str | int | None:
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value == int(value)):
        return int(value)
    return str(value)


def class_set(spec: AnnotateSpec, raw: list[Any]) -> LabelSet:
    """Class names from the spec, or the sorted distinct raw labels (numbers numerically)."""
    if spec.class_names is not None:
        names = list(spec.class_names)
        if len(set(names)) != len(names):
            raise SpecError("annotate.class_names: names must be distinct")
        return LabelSet(names, {**{i: i for i in range(len(names))}, **{n: i for i, n in enumerate(names)}})
    values = {v for v in raw if v is not None}
    if not values:
        raise SpecError(f"annotate: no row has a label (label column '{spec.label_column}', "
                        f"labelers: {', '.join(lab.type for lab in spec.labelers)})")
    numeric = all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in values)
    ordered = sorted({int(v) for v in values}) if numeric else sorted(str(v) for v in values)
    names = [str(v) for v in ordered]
    return LabelSet(names, {**{n: i for i, n in enumerate(names)}, **({v: i for i, v in enumerate(ordered)}
                                                                        if numeric else {})})


def annotate(spec: AnnotateSpec, rows: pa.Table, reasons: np.ndarray, given: pa.ChunkedArray,
             human: dict[str, str], classifier: Classifier | None, seed: int, unlabelled: bool = False) -> Annotation:
    """Label every live row (marking `reasons` of rows that stay unlabelled or are dropped).

    `rows` holds `source_ref` (and, for tables, the columns rules read); `given` is the label
    column's raw values. An `unlabelled` dataset puts every live row in its one class.
    """
    count = len(reasons)
    if unlabelled:
        label = np.where(reasons == "", 0, -1).astype(np.int64)
        annotation = Annotation([UNLABELLED_CLASS], label, np.full(count, "", dtype=object),
                                np.zeros(count, dtype=np.float32), report={"unlabelled": True, "label_sources": {}})
        annotation.given = label.copy()
        return annotation
    raw: list[Any] = [None] * count
    source = np.full(count, "", dtype=object)
    confidence = np.zeros(count, dtype=np.float32)
    live = reasons == ""
    model_labeler = None
    for labeler in spec.labelers:
        if labeler.type == "model":
            model_labeler = labeler
            continue
        if labeler.type == "column":
            values, shares, kind = [_key(v) for v in given.to_pylist()], np.ones(count), "given"
        elif labeler.type == "path":
            values = list(path_labels(labeler.pattern, rows["source_ref"].to_pylist()))
            shares, kind = np.ones(count), "rule"
        else:
            names, shares = vote(labeler, rows)
            values, kind = list(names), "rule"
        for i in np.flatnonzero(live & (source == "")):
            if values[i] is not None:
                raw[i], source[i], confidence[i] = values[i], kind, shares[i]
    if human:
        reviewed = pc.is_in(rows["source_ref"], value_set=pa.array(list(human), pa.string())).to_numpy(
            zero_copy_only=False)
        for i in np.flatnonzero(live & reviewed):
            raw[i], source[i], confidence[i] = human[rows["source_ref"][i].as_py()], "human", 1.0

    labels = class_set(spec, [raw[i] for i in np.flatnonzero(live)])
    label = np.full(count, -1, dtype=np.int64)
    for i in np.flatnonzero(live & (source != "")):
        key = raw[i]
        if key not in labels.by_value and isinstance(key, int):
            key = str(key)
        if key not in labels.by_value:
            reasons[i] = f"annotate: label not in class_names ({raw[i]!r})"
            source[i] = ""
            continue
        label[i] = labels.by_value[key]
    num_classes = len(labels.class_names)
    annotation = Annotation(labels.class_names, label, source, confidence)

    unlabelled = np.flatnonzero((reasons == "") & (label < 0))
    if model_labeler is not None and len(unlabelled):
        _pseudo_label(annotation, model_labeler, classifier, reasons, unlabelled, num_classes, seed)
    for i in np.flatnonzero((reasons == "") & (label < 0)):
        reasons[i] = "annotate: missing label"
    annotation.given = annotation.label.copy()
    if spec.label_quality is not None:
        _label_quality(annotation, spec, classifier, reasons, num_classes, seed)
    annotation.report["label_sources"] = {s: int((source == s).sum()) for s in SOURCES if (source == s).any()}
    return annotation


def _pseudo_label(annotation: Annotation, labeler: LabelerSpec, classifier: Classifier | None, reasons: np.ndarray,
                  unlabelled: np.ndarray, num_classes: int, seed: int) -> None:
    labelled = np.flatnonzero((reasons == "") & (annotation.label >= 0))
    if classifier is None or len(labelled) < num_classes:
        raise SpecError(f"annotate.labelers: the model labeler needs labelled rows of every class to learn "
                        f"from ({len(labelled)} labelled rows)")
    probs = classifier.fit_predict(labelled, annotation.label[labelled], unlabelled, num_classes, seed,
                                   labeler.epochs)
    best, top = probs.argmax(1), probs.max(1)
    sure = top >= labeler.min_confidence
    annotation.label[unlabelled[sure]] = best[sure]
    annotation.source[unlabelled[sure]] = "model"
    annotation.confidence[unlabelled[sure]] = top[sure]
    annotation.review, annotation.review_guess, annotation.review_confidence = unlabelled[~sure], best[~sure], top[~sure]
    for i, p in zip(unlabelled[~sure], top[~sure]):
        reasons[i] = f"{PENDING_REVIEW} (confidence {p:.2f})"
    annotation.report["pseudo_labels"] = {"unlabelled": len(unlabelled), "labelled": int(sure.sum()),
                                          "to_review": int((~sure).sum()),
                                          "min_confidence": labeler.min_confidence}


def confident_learning(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(issue mask, suggested class, noise-rate estimate) from out-of-fold `probs` and `given` labels.

    A row counts towards the confident joint C[given, j] when class j is the most probable
    of the classes at or above their threshold t_j (the mean probability of j over rows
    labelled j). C is calibrated so each row sums to that label's count; then, for every
    off-diagonal cell (i, j), the round(C[i, j]) rows labelled i with the largest margin
    p_j - p_i are flagged ("prune by noise rate"), so the number flagged follows the
    estimated noise. The suggested label is the most probable class other than the given one.
    """
    count, num_classes = probs.shape
    thresholds = np.array([probs[given == j, j].mean() if (given == j).any() else 1.0 for j in range(num_classes)])
    above = probs >= thresholds
    confident = np.where(above.any(1), np.where(above, probs, -1.0).argmax(1), -1)
    counted = confident >= 0
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint, (given[counted], confident[counted]), 1)
    calibrated = joint / np.maximum(joint.sum(1, keepdims=True), 1) * np.bincount(given, minlength=num_classes)[:, None]
    issue = np.zeros(count, dtype=bool)
    for i in range(num_classes):
        rows = np.flatnonzero(given == i)
        for j in range(num_classes):
            flagged = int(round(calibrated[i, j])) if i != j else 0
            if flagged:
                margin = probs[rows, j] - probs[rows, i]
                issue[rows[np.argsort(-margin, kind="stable")[:flagged]]] = True
    others = probs.copy()
    others[np.arange(count), given] = -1.0
    noise = float((calibrated.sum() - np.trace(calibrated)) / max(count, 1))
    return issue, others.argmax(1), noise


def out_of_fold(classifier: Classifier, rows: np.ndarray, labels: np.ndarray, folds: int, num_classes: int,
                seed: int, epochs: int) -> np.ndarray:
    """Probabilities for every row from a classifier that never saw it (K seeded folds)."""
    fold = np.random.default_rng(seed).permutation(len(rows)) % folds
    probs = np.zeros((len(rows), num_classes))
    for k in range(folds):
        held = fold == k
        probs[held] = classifier.fit_predict(rows[~held], labels[~held], rows[held], num_classes, seed + k, epochs)
    return probs


def _label_quality(annotation: Annotation, spec: AnnotateSpec, classifier: Classifier | None, reasons: np.ndarray,
                   num_classes: int, seed: int) -> None:
    quality = spec.label_quality
    scored = np.flatnonzero((reasons == "") & np.isin(annotation.source, ("given", "rule")))
    if classifier is None or len(scored) < quality.folds * num_classes:
        raise SpecError(f"annotate.label_quality: needs at least {quality.folds * num_classes} labelled rows "
                        f"({len(scored)} found)")
    given = annotation.label[scored]
    probs = out_of_fold(classifier, scored, given, quality.folds, num_classes, seed, quality.epochs)
    flagged, suggested, noise = confident_learning(probs, given)
    annotation.issue = np.zeros(len(reasons), dtype=bool)
    annotation.issue[scored] = flagged
    annotation.suggested = np.full(len(reasons), -1, dtype=np.int64)
    annotation.suggested[scored] = suggested
    rows = scored[flagged]
    names = annotation.class_names
    if quality.action == "drop":
        for i in rows:
            reasons[i] = (f"annotate: likely mislabelled (given {names[annotation.label[i]]}, "
                          f"suggested {names[annotation.suggested[i]]})")
    elif quality.action == "relabel":
        annotation.label[rows] = annotation.suggested[rows]
        annotation.source[rows] = "model"
        annotation.confidence[rows] = probs[flagged].max(1)
    annotation.report["label_quality"] = {"scored": len(scored), "flagged": int(flagged.sum()),
                                          "noise_estimate": noise, "action": quality.action,
                                          "flagged_rows": rows[:24].tolist()}

"""Annotation: labelers (column, path, rules, model), label quality, and the human review
round trip; every row ends with a class id, a `label_source` and a `label_confidence`."""

from pipeline.annotate.labels import (PENDING_REVIEW, SOURCES, Annotation, Classifier, LabelSet, annotate,
                                      needs_classifier)
from pipeline.annotate.review import export_review, import_review, read_human_labels

__all__ = ["PENDING_REVIEW", "SOURCES", "Annotation", "Classifier", "LabelSet", "annotate", "export_review",
           "import_review", "needs_classifier", "read_human_labels"]

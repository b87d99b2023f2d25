"""Annotation: turn the given labels into class ids with names and a provenance column."""

from pipeline.annotate.labels import LabelSet, apply_labels, discover_labels

__all__ = ["LabelSet", "apply_labels", "discover_labels"]

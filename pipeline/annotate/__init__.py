"""Annotation: turn the given labels into class ids with names and a provenance column."""

from pipeline.annotate.labels import LabelSet, discover_labels, label_ids

__all__ = ["LabelSet", "discover_labels", "label_ids"]

"""Evaluation metrics, one family per module."""

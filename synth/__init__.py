"""Generative models, their Ray Train loop, distributed sampling and evaluation metrics.

Importing `synth` does not import torch; the submodules that build models do.
"""

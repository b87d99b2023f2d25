"""Generator families by name. Each module defines one model behind `synth.models.base.GeneratorModel`."""

from __future__ import annotations

import importlib

_MODELS = {"cvae": ("synth.models.cvae", "ConditionalVAE"), "cgan": ("synth.models.cgan", "ConditionalGAN"),
           "cflow": ("synth.models.flow", "ConditionalFlow"),
           "tvae": ("synth.models.tvae", "TabularVAE"), "ctgan": ("synth.models.ctgan", "TabularGAN"),
           "textlm": ("synth.models.textlm", "TextLM")}
MODEL_KINDS = {"cvae": "image", "cgan": "image", "cflow": "image", "tvae": "table", "ctgan": "table", "textlm": "text"}
"""What each model generates (its `modality`), known without importing it."""
DEFAULT_MODELS = {"image": "cvae", "table": "tvae", "text": "textlm"}
TABLE_MODELS = tuple(name for name, kind in MODEL_KINDS.items() if kind == "table")
MODEL_NAMES = tuple(_MODELS)


def get_model(name: str):
    """A new instance of the model family `name` (a `synth.models.base.GeneratorModel`)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(MODEL_NAMES)}")
    module, cls = _MODELS[name]
    return getattr(importlib.import_module(module), cls)()


__all__ = ["DEFAULT_MODELS", "MODEL_KINDS", "MODEL_NAMES", "TABLE_MODELS", "get_model"]

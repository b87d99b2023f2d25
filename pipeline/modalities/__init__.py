"""The kinds of data a run can hold: one plug-in module each, on one run skeleton.

`pipeline.runner` runs collect → stage → annotate → account → split → train → sample →
evaluate → gates → publish → card for every kind of data and asks the spec's modality
(`for_spec`) for whatever differs (`pipeline.modalities.base.Modality`). A new kind of data
adds its module here and a line to `MODALITIES`; it changes no other modality's file.
"""

from __future__ import annotations

import importlib

from pipeline.modalities.base import Modality, RunContext
from pipeline.spec import Spec

MODALITIES = {"image": "pipeline.modalities.image:ImageModality",
              "table": "pipeline.modalities.table:TableModality",
              "text": "pipeline.modalities.text:TextModality"}
"""`source.kind` → the plug-in class (imported only when a run of that kind starts)."""


def for_spec(spec: Spec, run: RunContext) -> Modality:
    """The plug-in for the spec's kind of data, for one run."""
    module, name = MODALITIES[spec.source.kind].split(":")
    return getattr(importlib.import_module(module), name)(spec, run)


__all__ = ["MODALITIES", "Modality", "RunContext", "for_spec"]

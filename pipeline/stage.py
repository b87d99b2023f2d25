"""Where a run's collect + preprocess result (its stage) lives, and the key that names it.

A stage is what every later step reads: for images the pixels of every row, for tables the
rows cast to their column types, each with its narrow keys (source reference and its hash,
content hash, raw label, reject reason). The key hashes everything the stage depends on:
the source section of the spec, what the modality does to rows (its row operators, column
types), the input fingerprints and the code version. A rerun after a crash in a later
stage, or with only later settings changed, reuses the stage; `--fresh` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline import io
from pipeline.spec import Spec


def stage_key(spec: Spec, fingerprints: list[dict[str, Any]], code_version: dict[str, Any], **row_work: Any) -> str:
    """The stage's name: the spec's source, the inputs, the code and `row_work` (what the
    modality does to each row)."""
    payload = {"source": spec.source.model_dump(mode="json", exclude={"storage_options"}), "inputs": fingerprints,
               "code": code_version, **row_work}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_folder(spec: Spec, key: str, fresh: bool = False) -> io.Location:
    """Stages live beside the runs of a spec name, so runs that differ only in later stages
    share them; with `fresh` an existing stage of this key is removed first."""
    folder = io.resolve(os.path.abspath(os.path.join(spec.run_root, spec.name, "stages", key)))
    if fresh and folder.fs.exists(folder.path):
        folder.fs.rm(folder.path, recursive=True)
    return folder

"""The modality interface: what one kind of data supplies to the run skeleton.

The skeleton (`pipeline.runner`) owns every step's order, timing and logging, the row
accounting, annotation, the seeded split, training on Ray Train, the gates, the publish
commit, lineage, the closing summary and the card's common sections. A modality owns what
depends on the kind of row: how its source is read and staged (row operators, stage key),
the classifier behind pseudo-labels and label quality, the model schema and training rows,
sampling, the metrics, the published features and shards, and its card sections and plots.

One instance serves one run and keeps what its steps made (the stage, the splits, the
synthetic rows) for the steps after them, so each method takes only what is new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from pipeline import io
from pipeline.annotate import Annotation, Classifier
from pipeline.sources import Collected
from pipeline.spec import Spec


@dataclass(frozen=True)
class RunContext:
    """The run a modality serves."""

    run_id: str
    run_dir: str
    spec_hash: str
    code_version: dict[str, Any]


@dataclass
class Staged:
    """Every input row, in source order, as the skeleton's own steps read it."""

    keys: pa.Table
    """Narrow columns per row: `source_ref`, and whatever the spec's rule labelers read."""
    given: pa.ChunkedArray
    """The label each row came with (null where it has none)."""
    reasons: np.ndarray
    """The reject reason of each row ("" for a kept row); annotation adds its own."""
    ref_hashes: np.ndarray
    """The 64-bit hash of each `source_ref` (`pipeline.split.ref_hashes`): the split's key."""
    stage: dict[str, Any]
    """Where the stage is: its `key` (`pipeline.stage.stage_key`), `folder` URL, and whether
    this run `reused` it."""

    @property
    def refs(self) -> pa.ChunkedArray:
        return self.keys["source_ref"]


class Modality:
    """One kind of data. Subclasses implement every method that raises here."""

    unit = "rows"
    """What one row is called in progress lines and logs ("images", "rows")."""
    key_metrics: tuple[str, ...] = ()
    """The metrics the closing summary shows besides the gated ones."""
    logged_metrics: tuple[str, ...] = ()
    """The metrics the evaluate step's line shows."""

    def __init__(self, spec: Spec, run: RunContext):
        self.spec, self.run = spec, run

    def preflight(self) -> None:
        """Checks that need no Ray runtime (local files the spec names), before it starts."""

    def collect(self) -> Collected:
        """Open the source lazily and log what was found."""
        raise NotImplementedError

    def stage(self, collected: Collected, fresh: bool) -> Staged:
        """Run the row operators once into the stage (reusing a complete one unless `fresh`)
        and make the decisions that need every row (dedup)."""
        raise NotImplementedError

    def check_model(self) -> None:
        """Fail before training when the spec's generator cannot take this data."""

    def classifier(self) -> Classifier:
        """The model behind pseudo-labels and label-quality flags, over the staged rows."""
        raise NotImplementedError

    def unlabelled(self, staged: Staged) -> bool:
        """Whether the rows are one unlabelled set (unconditional generation)."""
        return False

    def annotated(self, annotation: Annotation) -> str:
        """Take the final labels in; return the annotate step's log line."""
        return annotation.summary()

    def review_items(self, rows: np.ndarray) -> dict[str, Any]:
        """What a reviewer sees of `rows`: `images=` (uint8 arrays) or `values=` (dicts)."""
        raise NotImplementedError

    def split(self, codes: np.ndarray, annotation: Annotation) -> dict[str, int]:
        """Form the splits from each row's `pipeline.split.SPLIT_CODES` code; rows per split."""
        raise NotImplementedError

    def training_data(self, annotation: Annotation) -> tuple[ray.data.Dataset, Any, str]:
        """The generator's training rows, its schema (`synth.models`), and a few words on them."""
        raise NotImplementedError

    def sample(self, model_dir: str, generator_id: str, annotation: Annotation) -> int:
        """Generate the spec's synthetic rows from the trained generator; how many."""
        raise NotImplementedError

    def evaluate(self, annotation: Annotation, step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The synthetic rows against the real splits: (metrics, what the lineage's generator
        record adds, e.g. the feature extractor's digest); `step(name)` as each metric starts."""
        raise NotImplementedError

    def publish(self, staging: io.Location, annotation: Annotation, generator_id: str | None) -> tuple[dict[str, int], int]:
        """Write the real splits under `staging/data` and the synthetic rows under
        `staging/synthetic` as typed shards; (rows per real split, synthetic rows)."""
        raise NotImplementedError

    def lineage(self) -> dict[str, Any]:
        """What this kind of run adds to `lineage.json`."""
        return {}

    def plots(self, staging: io.Location, annotation: Annotation) -> None:
        """Draw this kind of run's plots into the staged dataset."""

    def card(self, annotation: Annotation) -> dict[str, Any]:
        """This kind of data's parts of the card: `schema`, `task`, `tags`, `about`, `classes`,
        `curation`, `label_plot`, `reading_guide`, `quality_plots`, `sections`
        (`pipeline.publish.Card`)."""
        raise NotImplementedError

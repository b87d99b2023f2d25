"""Real datasets that ship inside scikit-learn's wheel (no files, no downloads).

`digits`: 1,797 8×8 handwritten digits with 17 grey levels, rescaled to 0–255.
"""

from __future__ import annotations

import numpy as np
import ray.data

from pipeline.errors import SourceError
from pipeline.sources.base import Collected, num_blocks
from pipeline.spec import SourceSpec

_DATASETS = ("digits",)


def _load_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _read_digits(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    digits = _load_digits()
    ids = batch["id"]
    pixels = digits.images[ids] * (255.0 / 16.0)
    return {
        "image": np.clip(np.rint(pixels), 0, 255).astype(np.uint8),
        "label": digits.target[ids].astype(np.int64),
        "source_ref": np.array([f"sklearn://digits#{i}" for i in ids], dtype=object),
    }


def read(spec: SourceSpec) -> Collected:
    name = spec.path or "digits"
    if name not in _DATASETS:
        raise SourceError(f"source.path: unknown bundled dataset '{name}'; known: {', '.join(_DATASETS)}")
    import sklearn

    count = len(_load_digits().target)
    if spec.limit:
        count = min(count, spec.limit)
    dataset = ray.data.range(count, override_num_blocks=num_blocks(count, 512)).map_batches(_read_digits, batch_size=None)
    fingerprint = {"url": f"sklearn://{name}", "files": 0, "rows": count, "method": f"scikit-learn {sklearn.__version__}"}
    return Collected(dataset=dataset, fingerprints=[fingerprint], rows=count)

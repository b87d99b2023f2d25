"""Annotation on real MNIST digits, through `datakiln run` (stage → annotate → publish):

1. label errors: 5 % of the labels flipped at random to another class; label quality
   (confident learning, 4 folds) flags rows; precision and recall against the flipped set;
2. pseudo-labels: labels kept for 10 % of the rows (the rest are files without a class
   folder); the model labeler labels what it is sure of (min_confidence 0.95) and sends
   the rest to review; accuracy of the pseudo-labels and coverage.

Last line: one JSON object.

    python benchmarks/annotate.py [--images 10000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")


def mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as handle:
        images = np.frombuffer(handle.read()[16:], np.uint8).reshape(-1, 28, 28)[:count]
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as handle:
        labels = np.frombuffer(handle.read()[8:], np.uint8).astype(np.int64)[:count]
    return images, labels


def _published(out: str, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for name in sorted(os.listdir(os.path.join(out, "data"))):
        rows += pq.read_table(os.path.join(out, "data", name), columns=columns).to_pylist()
    return rows


def label_errors(work: str, images: np.ndarray, labels: np.ndarray, noise: float) -> dict:
    from pipeline import build_spec, run

    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), size=int(round(noise * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    paths = []
    for name, magic, payload in (("images", 0x803, struct.pack(">III", len(images), 28, 28) + images.tobytes()),
                                 ("labels", 0x801, struct.pack(">I", len(noisy)) + noisy.astype(np.uint8).tobytes())):
        paths.append(os.path.join(work, f"noisy-{name}.gz"))
        with gzip.open(paths[-1], "wb") as handle:
            handle.write(struct.pack(">I", magic) + payload)
    out = os.path.join(work, "noisy-out")
    began = time.perf_counter()
    report = run(build_spec({"name": "noisy", "run_root": os.path.join(work, "runs"),
                             "source": {"format": "idx", "path": paths[0], "labels": paths[1]},
                             "annotate": {"label_quality": {"action": "keep"}},
                             "synthesize": {"enabled": False}, "publish": {"to": out}}))
    seconds = time.perf_counter() - began
    rows = _published(out, ["source_ref", "label_issue", "suggested_label"])
    flagged = {int(r["source_ref"].rsplit("#", 1)[1]): r["suggested_label"] for r in rows if r["label_issue"]}
    truth = set(flipped.tolist())
    hits = set(flagged) & truth
    return {"rows": len(labels), "flipped": len(truth), "flagged": len(flagged),
            "precision": round(len(hits) / max(len(flagged), 1), 4), "recall": round(len(hits) / len(truth), 4),
            "suggested_correct": round(float(np.mean([flagged[i] == labels[i] for i in hits])), 4),
            "noise_estimate": round(report.metrics["label_noise_estimate"], 4), "seconds": round(seconds, 1)}


def pseudo_labels(work: str, images: np.ndarray, labels: np.ndarray, kept: float) -> dict:
    from PIL import Image

    from pipeline import build_spec, run

    root = os.path.join(work, "partly")
    labelled = set(np.random.default_rng(1).choice(len(labels), size=int(kept * len(labels)), replace=False).tolist())
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, str(label)) if i in labelled else root
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
    out = os.path.join(work, "partly-out")
    began = time.perf_counter()
    report = run(build_spec({"name": "partly", "run_root": os.path.join(work, "runs"),
                             "source": {"format": "images", "path": root}, "preprocess": {"max_reject_fraction": 1.0},
                             "annotate": {"labelers": [{"type": "column"}, {"type": "model"}]},
                             "synthesize": {"enabled": False}, "publish": {"to": out}}))
    seconds = time.perf_counter() - began
    rows = [r for r in _published(out, ["source_ref", "label", "label_source"]) if r["label_source"] == "model"]
    correct = [r["label"] == labels[int(os.path.basename(r["source_ref"])[:5])] for r in rows]
    pseudo = report.lineage["annotation"]["pseudo_labels"]
    return {"labelled": len(labelled), "unlabelled": pseudo["unlabelled"], "pseudo_labelled": pseudo["labelled"],
            "to_review": pseudo["to_review"], "coverage": round(pseudo["labelled"] / pseudo["unlabelled"], 4),
            "accuracy": round(float(np.mean(correct)), 4), "min_confidence": pseudo["min_confidence"],
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    import torch  # noqa: F401  (before Ray and pyarrow)

    from cluster.runtime import configure_data_context, connect

    connect()
    configure_data_context()
    images, labels = mnist(args.images)
    with tempfile.TemporaryDirectory() as work:
        errors = label_errors(work, images, labels, 0.05)
        print(f"label errors: {errors}", flush=True)
        pseudo = pseudo_labels(work, images, labels, 0.10)
        print(f"pseudo-labels: {pseudo}", flush=True)
    print(json.dumps({"label_errors": errors, "pseudo_labels": pseudo}))


if __name__ == "__main__":
    main()

"""Photo training throughput: each image model's steady-state images/s through datakiln's
Ray Train loop (data through Ray Data shards) against a plain PyTorch loop of the same
network, batch and data run inside a Ray Train worker, on CIFAR-10 photos (32×32 RGB from
`../shared/data/cifar10`). Contenders are interleaved per round; the ratio reported is the
median over rounds with its range (target ≥ 0.9). Last line: one JSON object.

    python benchmarks/photos.py [--images 2000] [--epochs 3] [--rounds 3] [--models cvae,cgan,cflow]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10")

from train_overhead import plain_loop_in_ray_train, ray_loop  # noqa: E402


def cifar(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count / 10` photos of each class folder, decoded to uint8 (N, 32, 32, 3)."""
    from PIL import Image

    classes = sorted(os.listdir(CIFAR))
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(CIFAR, name)))[:count // len(classes)]:
            with Image.open(os.path.join(CIFAR, name, file)) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", default="cvae,cgan,cflow")
    args = parser.parse_args()
    images, labels = cifar(args.images)
    results = {}
    for model in args.models.split(","):
        plain, through_ray = [], []
        for round_ in range(args.rounds):
            plain.append(plain_loop_in_ray_train(images, labels, model, args.epochs, args.batch_size))
            through_ray.append(ray_loop(images, labels, model, args.epochs, args.batch_size)[0])
            print(f"{model} round {round_ + 1}: plain loop in a Ray Train worker {plain[-1]:.0f} images/s, "
                  f"datakiln's loop {through_ray[-1]:.0f} images/s", flush=True)
        ratios = [r / p for r, p in zip(through_ray, plain)]
        results[model] = {"plain_in_ray_train_images_per_s": round(float(np.median(plain)), 1),
                          "ray_images_per_s": round(float(np.median(through_ray)), 1),
                          "ratio": round(float(np.median(ratios)), 3),
                          "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    print(json.dumps({"images": len(labels), "shape": list(images.shape[1:]), "epochs": args.epochs,
                      "batch_size": args.batch_size, "rounds": args.rounds, "target_ratio": 0.9, "models": results}))


if __name__ == "__main__":
    main()

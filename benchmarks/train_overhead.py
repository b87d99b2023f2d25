"""Ray Train overhead: steady-state images/s of datakiln's training loop (1 worker, data
through Ray Data shards) against a plain PyTorch loop on the same model, batch and data,
measured in one run; plus the start-up time to the first step. The plain loop also runs
inside a Ray Train worker (in-memory data, no datakiln code), which separates what the
worker costs (Ray Train runs the loop in a thread of an actor) from what datakiln's loop
and its Ray Data input cost. Last line: one JSON object.

    python benchmarks/train_overhead.py [--model cvae] [--epochs 6] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "mnist")


def mnist() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as handle:
        images = np.frombuffer(handle.read()[16:], dtype=np.uint8).reshape(-1, 28, 28, 1)
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as handle:
        labels = np.frombuffer(handle.read()[8:], dtype=np.uint8).astype(np.int64)
    return images, labels


def schema_of(images: np.ndarray, labels: np.ndarray):
    """The ImageSchema of uint8 (N, H, W, C) images with integer labels 0..K-1."""
    from synth.models.base import ImageSchema

    return ImageSchema(images.shape[1], images.shape[2], images.shape[3], int(labels.max()) + 1)


def plain_loop(images, labels, model_name: str, epochs: int, batch_size: int,
               settings: dict | None = None) -> float:
    """Steady-state images/s (epochs after the first) of a plain in-memory PyTorch loop."""
    import torch

    from synth.models import get_model
    from synth.models.base import with_defaults
    from synth.step import to_model_input

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = get_model(model_name)
    config = with_defaults(model, settings or {})
    networks = model.build(schema_of(images, labels), config)
    optimizers = model.optimizers(networks, config)
    data = {"image": torch.from_numpy(images), "label": torch.from_numpy(labels)}
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
        began = time.perf_counter()
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch_images, batch_labels = to_model_input({k: v[index] for k, v in data.items()})
            model.training_step(networks, batch_images, batch_labels, optimizers)
        rates.append(len(labels) / (time.perf_counter() - began))
    return float(np.median(rates[1:]))


def plain_loop_in_ray_train(images, labels, model_name: str, epochs: int, batch_size: int,
                            settings: dict | None = None) -> float:
    """`plain_loop`, run as the training function of a 1-worker Ray Train job."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from cluster.runtime import connect

    def train_fn(config):
        rate = plain_loop(images, labels, model_name, epochs, batch_size, settings)
        with open(config["out"], "w") as handle:  # Ray Train 2.60 keeps only checkpointed metrics
            handle.write(str(rate))

    connect()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "images_per_s")
        TorchTrainer(train_fn, train_loop_config={"out": out}, scaling_config=ray.train.ScalingConfig(num_workers=1),
                     run_config=ray.train.RunConfig(storage_path=folder, name="plain")).fit()
        with open(out) as handle:
            return float(handle.read())


def ray_loop(images, labels, model_name: str, epochs: int, batch_size: int,
             settings: dict | None = None) -> tuple[float, float, float]:
    """Steady-state images/s, seconds from `fit` to the training loop's start, and `fit`'s
    whole wall time, through Ray Train."""
    import ray
    import ray.data

    from cluster.runtime import configure_data_context, connect
    from synth.models import get_model
    from synth.models.base import with_defaults
    from synth.train import TrainConfig, fit

    connect()
    configure_data_context()
    dataset = ray.data.range(len(labels), override_num_blocks=4).map_batches(
        lambda batch: {"image": images[batch["id"]], "label": labels[batch["id"]]}).materialize()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(model=model_name, model_config=with_defaults(get_model(model_name), settings or {}),
                             epochs=epochs,
                             batch_size=batch_size, seed=0, attempts_uri=os.path.join(folder, "attempts"))
        began, wall = time.perf_counter(), time.time()
        result = fit(dataset, schema_of(images, labels), config, workers=1, use_gpu=False,
                     storage_path=os.path.join(folder, "train"), run_name="overhead", max_failures=0,
                     model_dir=os.path.join(folder, "model"))
        total = time.perf_counter() - began
    rates = [row["rows_per_s"] for row in result.history]
    startup = result.attempts[0]["time"] - wall  # the loop records its start before the first step
    ray.shutdown()
    return float(np.median(rates[1:])), startup, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cvae")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    images, labels = mnist()
    plain = plain_loop(images, labels, args.model, args.epochs, args.batch_size)
    print(f"plain PyTorch loop: {plain:.0f} images/s")
    in_worker = plain_loop_in_ray_train(images, labels, args.model, args.epochs, args.batch_size)
    print(f"plain PyTorch loop inside a Ray Train worker: {in_worker:.0f} images/s")
    through_ray, startup, total = ray_loop(images, labels, args.model, args.epochs, args.batch_size)
    print(f"Ray Train loop (data through Ray Data): {through_ray:.0f} images/s; start-up to the training loop "
          f"{startup:.1f} s; fit() {total:.1f} s in all")
    print(json.dumps({"model": args.model, "images": len(labels), "epochs": args.epochs, "batch_size": args.batch_size,
                      "plain_images_per_s": round(plain, 1), "ray_images_per_s": round(through_ray, 1),
                      "ratio": round(through_ray / plain, 3), "target_ratio": 0.9,
                      "plain_in_ray_train_images_per_s": round(in_worker, 1),
                      "ratio_to_plain_in_ray_train": round(through_ray / in_worker, 3),
                      "startup_s": round(startup, 1), "fit_seconds": round(total, 1)}))


if __name__ == "__main__":
    main()

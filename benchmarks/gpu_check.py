"""GPU check: train a generator on CUDA with the same step code as the Ray Train loop.

Trains `--model` on 60,000 28×28 images (MNIST's 10,000 test images tiled six times) for a
fixed number of steps and prints images/s, peak GPU memory and the first/last loss. Needs
only torch and numpy (it runs where Ray is not installed). Last line: one JSON object.

    python benchmarks/gpu_check.py --images ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
        --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synth.models import get_model  # noqa: E402
from synth.models.base import ImageSchema, with_defaults  # noqa: E402
from synth.step import autocast_for, prepare_module, to_model_input  # noqa: E402


def read_idx(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images_path) as handle:
        raw = handle.read()
    count, rows, cols = np.frombuffer(raw[4:16], dtype=">u4")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, rows, cols, 1)
    with gzip.open(labels_path) as handle:
        labels = np.frombuffer(handle.read()[8:], dtype=np.uint8).astype(np.int64)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model", default="cgan")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--total", type=int, default=60_000)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images, labels = read_idx(args.images, args.labels)
    reps = -(-args.total // len(images))
    images, labels = np.tile(images, (reps, 1, 1, 1))[: args.total], np.tile(labels, reps)[: args.total]
    data = {"image": torch.from_numpy(images).to(device), "label": torch.from_numpy(labels).to(device)}

    torch.manual_seed(0)
    model = get_model(args.model)
    config = with_defaults(model, {})
    networks = {name: prepare_module(net, device) for name, net in model.build(ImageSchema(28, 28, 1, 10), config).items()}
    optimizers = model.optimizers(networks, config)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> dict[str, torch.Tensor]:
        index = torch.randint(0, args.total, (args.batch_size,), device=device, generator=generator)
        batch_images, batch_labels = to_model_input({"image": data["image"][index], "label": data["label"][index]})
        with autocast_for(device):
            return model.training_step(networks, batch_images, batch_labels, optimizers)

    first = float(step()["loss"])  # includes CUDA context and kernel selection
    warmup = 20
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(args.steps):
        losses = step()
    last = float(losses["loss"])
    seconds = time.perf_counter() - began
    sampler = networks[model.sampler_name()].eval()
    with torch.no_grad():
        noise = torch.randn(10, model.noise_dim(config), device=device)
        samples = model.sample(sampler, torch.arange(10, device=device), noise)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "images_per_s": round(args.steps * args.batch_size / seconds, 1), "seconds": round(seconds, 2),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "first_loss": round(first, 3), "last_loss": round(last, 3),
        "samples_finite": bool(torch.isfinite(samples).all()), "amp": "bf16" if device.type == "cuda" else "fp32",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""GPU check: train a generator on CUDA with the same step code as the Ray Train loop.

Trains `--model` on 60,000 28×28 images (MNIST's 10,000 test images tiled six times), or a
table model (`tvae`, `ctgan`) on a CSV given with `--table` and `--target`, for a fixed
number of steps and prints rows/s, peak GPU memory and the first/last losses.
`--precision` is the spec's `synthesize.precision` (auto, bf16 or fp32), resolved as the Ray
Train loop resolves it. `--grid` saves a sample grid from the sampling network. Needs only
torch, numpy, pyarrow and Pillow (it runs where Ray is not installed). Last line: one JSON
object.

    python benchmarks/gpu_check.py --images ../shared/data/mnist/t10k-images-idx3-ubyte.gz \\
        --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz --grid cgan.png
    python benchmarks/gpu_check.py --table ../shared/data/bank/bank.csv --target deposit --model ctgan
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
from synth.models.base import ImageSchema, class_grid, save_png, with_defaults  # noqa: E402
from synth.models.table import TableSchema  # noqa: E402
from synth.step import PRECISIONS, autocast_for, place_inputs, prepare_module, resolve_precision  # noqa: E402


def read_idx(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images_path) as handle:
        raw = handle.read()
    count, rows, cols = np.frombuffer(raw[4:16], dtype=">u4")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, rows, cols, 1)
    with gzip.open(labels_path) as handle:
        labels = np.frombuffer(handle.read()[8:], dtype=np.uint8).astype(np.int64)
    return images, labels


def image_data(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], ImageSchema]:
    images, labels = read_idx(args.images, args.labels)
    reps = -(-args.total // len(images))
    images, labels = np.tile(images, (reps, 1, 1, 1))[: args.total], np.tile(labels, reps)[: args.total]
    return {"image": images, "label": labels}, ImageSchema(*images.shape[1:], int(labels.max()) + 1)


def table_data(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], TableSchema]:
    """The CSV's rows, encoded as the table pipeline encodes its train split."""
    from pyarrow import csv

    from synth.tabular import TableEncoder, infer_kinds

    table = csv.read_csv(args.table)
    kinds = infer_kinds(table, {args.target: "categorical"})
    encoder = TableEncoder.fit(table.select(list(kinds)), kinds, seed=0, primary=args.target)
    return {"features": encoder.encode(table)}, TableSchema(encoder.to_json())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cgan")
    parser.add_argument("--images", help="IDX images (.gz), for an image model")
    parser.add_argument("--labels", help="IDX labels (.gz), for an image model")
    parser.add_argument("--total", type=int, default=60_000, help="images, tiling the IDX file")
    parser.add_argument("--table", help="a CSV, for a table model")
    parser.add_argument("--target", help="the CSV's target column")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--grid", help="image models: save a sample grid (one row per class) to this PNG")
    args = parser.parse_args()
    model = get_model(args.model)
    if model.modality == "table" and not (args.table and args.target):
        parser.error(f"{args.model} needs --table and --target")
    if model.modality == "image" and not (args.images and args.labels):
        parser.error(f"{args.model} needs --images and --labels")

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, schema = table_data(args) if model.modality == "table" else image_data(args)
    rows = len(next(iter(data.values())))
    data = {k: torch.from_numpy(v).to(device) for k, v in data.items()}

    torch.manual_seed(0)
    config = with_defaults(model, {})
    precision = resolve_precision(args.precision, device, args.batch_size * schema.values_per_row)
    networks = {name: prepare_module(net, device, precision) for name, net in model.build(schema, config).items()}
    optimizers = model.optimizers(networks, config)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> dict[str, torch.Tensor]:
        index = torch.randint(0, rows, (args.batch_size,), device=device, generator=generator)
        inputs = place_inputs(model.inputs({k: v[index] for k, v in data.items()}), device, precision)
        with autocast_for(device, precision):
            return model.training_step(networks, *inputs, optimizers)

    first = {k: round(float(v), 3) for k, v in step().items()}  # includes CUDA context and kernel selection
    first_step_s = time.perf_counter() - started
    for _ in range(20):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(args.steps):
        losses = step()
    last = {k: round(float(v), 3) for k, v in losses.items()}  # float() waits for the GPU
    seconds = time.perf_counter() - began
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": args.model, "rows": rows, "batch_size": args.batch_size,
        "steps": args.steps, "precision": precision, "rows_per_s": round(args.steps * args.batch_size / seconds, 1),
        "seconds": round(seconds, 2), "seconds_to_first_step": round(first_step_s, 2),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "first_loss": first, "last_loss": last,
    }
    if model.modality == "image":
        grid = class_grid(model, networks[model.sampler_name()], schema.num_classes, config)
        if args.grid:
            save_png(grid, args.grid)
        result["sample_grid_mean"] = round(float(grid.mean()) / 255, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

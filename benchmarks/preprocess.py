"""Collection + preprocessing throughput and memory: datakiln against hand-written loops.

The input is a folder of MNIST-sized PNG files in class sub-folders, made by tiling the
bundled MNIST test set (each copy differs in one pixel, so exact dedup keeps them all).
Every contender does the same work: list and read the files, decode, convert to grey,
check the shape, hash and drop exact duplicates, encode PNG once and write Parquet shards
with the label and a source reference.

- `single`: one Python process, PIL + numpy + pyarrow;
- `datasets_map`: `datasets.Dataset.map(num_proc=2)` then `to_parquet`;
- `datakiln`: `datakiln run` with synthesis off (collect → preprocess → annotate → split →
  publish), Ray started before the clock. It does the same work but one step: an input PNG
  whose pixels preprocessing left unchanged (8-bit grey or RGB) is published as it is, so
  these files are decoded, checked and hashed but not encoded again.

Each contender runs in its own process. Its speed is timed in runs with nothing else
measuring; its peak memory, the largest sum of PSS over that process and all its
descendants (Ray's raylet, GCS and workers included), sampled every 0.2 s, comes from one
more run (reading PSS walks every process's page tables: ~55 ms of CPU a sample over
datakiln's ~23 processes, ~14 % of this 2-core machine, against ~3 ms for one process, so a
sampled run would tax the multi-process contenders most). With `--memory-scale 10` datakiln also runs on 10× the images to show memory stays
bounded. The VM is noisy, so the contenders run interleaved in `--rounds` rounds (each round
in a rotated order) and the figures are medians, with the range of the per-round ratios.
Last line: one JSON object.

    python benchmarks/preprocess.py [--images 100000] [--rounds 3] [--memory-scale 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from processes import descendants, pss_kib, run_sampled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
FILES_PER_FOLDER = 1000


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as handle:
        images = np.frombuffer(handle.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as handle:
        labels = np.frombuffer(handle.read()[8:], dtype=np.uint8)
    return images, labels


def _write_files(args: tuple[str, int, int]) -> None:
    from PIL import Image

    root, start, stop = args
    images, labels = _mnist()
    for i in range(start, stop):
        copy, index = divmod(i, len(labels))
        image = images[index].copy()
        if copy:  # copy k flips the low bit of pixel k: distinct bytes, same digit
            image.flat[copy % image.size] ^= 1
        folder = os.path.join(root, str(labels[index]), f"{i // FILES_PER_FOLDER:05d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:07d}.png"))


def make_input(root: str, count: int) -> None:
    marker = os.path.join(root, f".complete-{count}")
    if os.path.exists(marker):
        return
    shutil.rmtree(root, ignore_errors=True)
    chunks = [(root, start, min(count, start + 10_000)) for start in range(0, count, 10_000)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_files, chunks))
    open(marker, "w").close()


def _list_pngs(root: str) -> list[str]:
    paths = []
    for folder, _, files in os.walk(root):
        paths.extend(os.path.join(folder, f) for f in files if f.endswith(".png"))
    return sorted(paths)


def _process_file(path: str, root: str) -> tuple[bytes, int, str, str] | None:
    """Shared per-file work of the hand-written contenders: (png, label, ref, hash) or None."""
    from PIL import Image

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:
        return None
    array = np.asarray(image.convert("L"), dtype=np.uint8)
    if array.shape != (28, 28):
        return None
    digest = hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    label = int(os.path.relpath(path, root).split(os.sep)[0])
    return buffer.getvalue(), label, path, digest


def run_single(root: str, out: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen: set[str] = set()
    rows, shard = {"image": [], "label": [], "source_ref": []}, 0

    def flush() -> None:
        nonlocal rows, shard
        table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in rows["image"]]),
                          "label": rows["label"], "source_ref": rows["source_ref"]})
        pq.write_table(table, os.path.join(out, f"train-{shard:05d}.parquet"))
        rows, shard = {"image": [], "label": [], "source_ref": []}, shard + 1

    kept = 0
    for path in _list_pngs(root):
        result = _process_file(path, root)
        if result is None or result[3] in seen:
            continue
        seen.add(result[3])
        rows["image"].append(result[0])
        rows["label"].append(result[1])
        rows["source_ref"].append(result[2])
        kept += 1
        if len(rows["label"]) == 10_000:
            flush()
    if rows["label"]:
        flush()
    return kept


def _map_batch(batch: dict, root: str) -> dict:
    results = [_process_file(p, root) for p in batch["path"]]
    return {"image": [{"bytes": r[0], "path": None} if r else None for r in results],
            "label": [r[1] if r else -1 for r in results],
            "source_ref": [r[2] if r else "" for r in results],
            "hash": [r[3] if r else "" for r in results]}


def run_datasets_map(root: str, out: str) -> int:
    import datasets

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict({"path": _list_pngs(root)})
    mapped = table.map(_map_batch, fn_kwargs={"root": root}, batched=True, batch_size=1000, num_proc=2,
                       remove_columns=["path"])
    seen: set[str] = set()
    keep = [i for i, h in enumerate(mapped["hash"]) if h and not (h in seen or seen.add(h))]
    kept = mapped.select(keep).remove_columns(["hash"])
    kept.to_parquet(os.path.join(out, "train.parquet"))
    return len(kept)


def stage_only_spec(name: str, root: str, out: str):
    """A spec that collects `root`, stages and publishes it, with synthesis and evaluation off."""
    from pipeline.spec import build_spec

    return build_spec({"name": name, "run_root": f"{out}/runs", "source": {"format": "images", "path": root},
                       "synthesize": {"enabled": False}, "evaluate": {"enabled": False},
                       "publish": {"to": f"{out}/dataset"}}, origin="benchmark")


def run_datakiln(root: str, out: str) -> int:
    sys.path.insert(0, ROOT)
    from cluster.runtime import configure_data_context, connect
    from pipeline.runner import run

    connect(temp_dir=os.path.join(out, "ray"))
    configure_data_context()
    spec = stage_only_spec("bench", root, out)
    began = time.perf_counter()
    report = run(spec)
    _report(began, report.lineage["rows"]["rows_out"])
    return -1


def _report(began: float, rows: int) -> None:
    print(json.dumps({"seconds": time.perf_counter() - began, "rows": rows}), flush=True)


def _child(contender: str, root: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()
    rows = {"single": run_single, "datasets_map": run_datasets_map, "datakiln": run_datakiln}[contender](root, out)
    if rows >= 0:
        _report(began, rows)


def measure(contender: str, root: str, work: str, memory: bool = False) -> dict:
    """Run one contender in a child process: its timing line, and with `memory` the peak PSS
    of its process tree (a sampled run, not timed)."""
    out = os.path.join(work, contender)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "RAY_DATA_LOG_LEVEL": "WARNING", "HF_DATASETS_OFFLINE": "1"}
    peak = 0

    def sample(pid: int) -> None:
        nonlocal peak
        if memory:
            peak = max(peak, sum(pss_kib(p) for p in descendants(pid)))

    lines = run_sampled([sys.executable, __file__, "--child", contender, "--root", root, "--out", out], env, sample,
                        contender)
    result = json.loads([line for line in lines if line.startswith('{"seconds"')][-1])
    result.update(images_per_s=result["rows"] / result["seconds"], peak_pss_mib=peak / 1024)
    shutil.rmtree(out, ignore_errors=True)
    shown = f"peak PSS {result['peak_pss_mib']:,.0f} MiB" if memory else (
        f"{result['seconds']:.1f} s = {result['images_per_s']:,.0f} images/s")
    print(f"{contender:>13}: {result['rows']} rows, {shown}", flush=True)
    return result


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--memory-scale", type=int, default=0, help="also run datakiln on this many times the images")
    parser.add_argument("--contenders", default="single,datasets_map,datakiln")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are their medians")
    parser.add_argument("--keep", help="folder for the generated inputs (reused across runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.root, args.out)
        return
    work = args.keep or tempfile.mkdtemp(prefix="datakiln-bench-")
    root = os.path.join(work, f"pngs-{args.images}")
    began = time.perf_counter()
    make_input(root, args.images)
    print(f"input: {args.images} PNG files under {root} ({time.perf_counter() - began:.0f} s to make)", flush=True)
    names = args.contenders.split(",")
    rounds: list[dict[str, dict]] = []
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]  # rotate: no contender always goes first
        print(f"round {index + 1}/{args.rounds}: {', '.join(order)}", flush=True)
        rounds.append({name: measure(name, root, work) for name in order})
    print("memory: one sampled run each", flush=True)
    memory = {name: measure(name, root, work, memory=True) for name in names}
    figures: dict = {"images": args.images, "cpus": os.cpu_count(), "rounds": args.rounds}
    for name in names:
        figures[f"{name}_images_per_s"] = round(_median([r[name]["images_per_s"] for r in rounds]), 1)
        figures[f"{name}_peak_pss_mib"] = round(memory[name]["peak_pss_mib"], 1)
    for baseline, key in (("single", "speedup_vs_single"), ("datasets_map", "speedup_vs_datasets_map")):
        if baseline in names and "datakiln" in names:
            ratios = [r["datakiln"]["images_per_s"] / r[baseline]["images_per_s"] for r in rounds]
            figures[key] = round(_median(ratios), 3)
            figures[f"{key}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    if args.memory_scale:
        big = os.path.join(work, f"pngs-{args.images * args.memory_scale}")
        make_input(big, args.images * args.memory_scale)
        large = measure("datakiln", big, work, memory=True)
        figures[f"datakiln_{args.memory_scale}x_peak_pss_mib"] = round(large["peak_pss_mib"], 1)
        figures["memory_ratio_at_scale"] = round(large["peak_pss_mib"] / memory["datakiln"]["peak_pss_mib"], 3)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""The collect + preprocess stage is materialised once and reused by reruns with the same
inputs; `--fresh` and changed inputs recompute it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline import build_spec, run
from pipeline.cli import main
from pipeline.errors import GateError
from tests.conftest import blob_images, load_published, png_bytes

pytestmark = pytest.mark.integration


def _folder(root, count: int = 40) -> None:
    images, labels = blob_images(count, size=12)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        (root / str(label) / f"{i:03d}.png").write_bytes(png_bytes(image))
    (root / "0" / "broken.png").write_bytes(b"not a png")


def _spec(tmp_path, out: str, **preprocess):
    return build_spec({"name": "staged", "run_root": str(tmp_path / "runs"),
                       "source": {"format": "images", "path": str(tmp_path / "images")},
                       "preprocess": preprocess, "synthesize": {"enabled": False},
                       "publish": {"to": str(tmp_path / out)}})


def test_a_rerun_after_a_later_failure_reuses_the_stage(tmp_path, capsys):
    _folder(tmp_path / "images")
    with pytest.raises(GateError, match="max_reject_fraction"):  # fails after the stage is written
        run(_spec(tmp_path, "a", max_reject_fraction=0.0))
    assert "reusing the stage" not in capsys.readouterr().out
    written = json.loads(next((tmp_path / "runs" / "staged").glob("*/lineage.json")).read_text())
    assert written["failed"].startswith("preprocess.max_reject_fraction") and written["class_names"] == ["0", "1"]

    report = run(_spec(tmp_path, "a"))
    assert report.lineage["stage"]["reused"] and "reusing the stage" in capsys.readouterr().out
    assert report.lineage["rows"] == {**report.lineage["rows"], "rows_in": 41, "rows_rejected": 1, "rows_out": 40}

    # a different later setting (here the target) shares the stage and gives the same shards
    again = run(_spec(tmp_path, "b"))
    assert again.lineage["stage"] == report.lineage["stage"]
    for split in ("train", "test"):
        shard = next((tmp_path / "a").glob(f"data/{split}-*-00000-of-00001.parquet")).relative_to(tmp_path / "a")
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


def test_fresh_and_changed_inputs_recompute_the_stage(tmp_path, capsys):
    _folder(tmp_path / "images")
    first = run(_spec(tmp_path, "a"))
    assert not first.lineage["stage"]["reused"]

    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec(tmp_path, "a").model_dump(mode="json")))
    assert main(["run", str(spec), "--fresh"]) == 0
    assert "reusing the stage" not in capsys.readouterr().out

    images, _ = blob_images(1, size=12, seed=7)
    (tmp_path / "images" / "1" / "new.png").write_bytes(png_bytes(images[0]))  # the input changed
    changed = run(_spec(tmp_path, "a"))
    assert not changed.lineage["stage"]["reused"] and changed.lineage["stage"]["key"] != first.lineage["stage"]["key"]
    assert changed.lineage["rows"]["rows_in"] == 42


def test_near_duplicates_are_dropped_deterministically_with_examples(tmp_path):
    root = tmp_path / "images"
    noise = np.random.default_rng(0).integers(0, 256, size=(30, 12, 12), dtype=np.uint8)
    for i, image in enumerate(noise):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        (root / str(i % 2) / f"{i:03d}.png").write_bytes(png_bytes(image))
    brighter = np.clip(noise[5].astype(np.int16) + 10, 0, 255).astype(np.uint8)
    (root / "1" / "zz-brighter-copy.png").write_bytes(png_bytes(brighter))
    ops = [{"op": "decode"}, {"op": "dedup"}, {"op": "near_dedup", "distance": 4}]
    report = run(_spec(tmp_path, "a", ops=ops))
    near = report.lineage["duplicates"]["near_dedup"]
    assert near["marked"] == 1 and report.lineage["rows"]["rows_out"] == 30
    (example,) = near["examples"]
    assert example["kept"] == "1/005.png" and example["dropped"] == "1/zz-brighter-copy.png"
    assert example["distance"] <= 4
    assert (tmp_path / "a" / "near_duplicates.png").stat().st_size > 1000
    rejects = load_published("parquet", data_files=f"{report.run_dir}/rejects/*.parquet", tmp_path=tmp_path)["train"]
    assert [r["reason"].split(" (")[0] for r in rejects] == [f"near_dedup: near duplicate of {example['kept']}"]
    again = run(_spec(tmp_path, "b", ops=ops))
    assert again.lineage["duplicates"] == report.lineage["duplicates"]


def test_unchanged_input_pngs_are_published_as_they_are(tmp_path):
    """An 8-bit grey PNG that no operator changed is published byte for byte; a JPEG, a 16-bit
    PNG and a PNG the resize changed are encoded again from their pixels."""
    import datasets
    from PIL import Image

    images, _ = blob_images(6, size=12)
    root = tmp_path / "images" / "0"
    root.mkdir(parents=True)
    plain = {f"{i}.png": png_bytes(images[i]) for i in range(3)}
    for name, content in plain.items():
        (root / name).write_bytes(content)
    (root / "3.jpg").write_bytes(png_bytes(images[3], "JPEG"))
    Image.fromarray(images[4].astype(np.uint16) * 257).save(root / "4.png")
    Image.fromarray(np.kron(images[5], np.ones((2, 2), np.uint8))).save(root / "5.png")  # 24x24: resized
    run(_spec(tmp_path, "out", ops=[{"op": "decode"}, {"op": "color"}, {"op": "resize", "size": 12}]))
    published = {}
    for split in ("train", "test"):
        rows = load_published(tmp_path / "out", split=split, tmp_path=tmp_path)
        for row in rows.cast_column("image", datasets.Image(decode=False)):
            published[row["source_ref"].rsplit("/", 1)[-1]] = row["image"]["bytes"]
    assert sorted(published) == ["0.png", "1.png", "2.png", "3.jpg", "4.png", "5.png"]
    for name, content in plain.items():
        assert published[name] == content
    for name in ("3.jpg", "4.png", "5.png"):
        assert published[name] != (root / name).read_bytes()
        decoded = np.asarray(Image.open(io.BytesIO(published[name])))
        assert published[name][:8] == b"\x89PNG\r\n\x1a\n" and decoded.shape == (12, 12) and decoded.dtype == np.uint8


def _sleep_and_clock(batch):
    import time

    start = time.time()
    time.sleep(0.4)
    return {"start": [start], "end": [time.time()]}


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("cores", [2, 3])
def test_a_row_pass_runs_as_many_tasks_at_once_as_it_is_allowed(cores):
    """Ray Data 2.60 ran a single-operator pass's tasks one at a time (its per-operator
    reservation shares half the CPUs with the input buffer, which runs no task); a row pass
    runs `row_pass_compute`'s number of tasks at once, and no more."""
    import pyarrow as pa
    import ray.data

    from cluster.runtime import run_on_every_core

    blocks = ray.data.from_blocks([pa.table({"x": [i]}) for i in range(3 * cores)])
    row_pass = run_on_every_core(blocks.map_batches(_sleep_and_clock, batch_size=None,
                                                    compute=ray.data.TaskPoolStrategy(size=cores)))
    row_pass.take_all()  # the first run may wait for worker processes to start
    most, concurrency = [], []
    for _ in range(3):  # the best of three runs: a run may still wait for a worker now and then
        rows = row_pass.take_all()
        assert len(rows) == 3 * cores
        intervals = [(row["start"], row["end"]) for row in rows]
        most.append(_most_at_once(intervals))
        span = max(end for _, end in intervals) - min(start for start, _ in intervals)
        concurrency.append(sum(end - start for start, end in intervals) / span)
    assert max(most) == cores
    assert max(concurrency) >= 0.8 * cores  # tasks at once on average; 1.2 of 2 before (measured)


def test_image_read_tasks_take_files_by_bytes(tmp_path, monkeypatch):
    """A read task takes `BYTES_PER_BLOCK` of files (large photos: few files, so a task's
    decoded pixels stay bounded), at most `MAX_FILES_PER_BLOCK` (tiny files: many, so a task
    has enough work to amortise its start)."""
    from pipeline.sources import images
    from pipeline.spec import SourceSpec

    for i in range(8):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"{i}.png").write_bytes(png_bytes(np.random.default_rng(i).integers(0, 256, (96, 96), np.uint8)))
    sizes = [path.stat().st_size for path in (tmp_path / "a").iterdir()]

    def blocks() -> int:
        return images.read(SourceSpec(format="images", path=str(tmp_path))).dataset.materialize().num_blocks()

    monkeypatch.setattr(images, "BYTES_PER_BLOCK", 3 * sum(sizes) // len(sizes))
    assert blocks() == 3  # 3 + 3 + 2 files
    monkeypatch.setattr(images, "MAX_FILES_PER_BLOCK", 2)
    assert blocks() == 4

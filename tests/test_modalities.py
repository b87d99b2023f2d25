"""The modality interface's conformance suite, run against every registered modality: each
one's small source goes through the one run skeleton three times (twice from scratch in
separate run roots, once more with synthesis off, reusing the first run's stage) and must
keep the skeleton's promises: stage keys and row accounting, the same dataset under the
same seed, features that survive `datasets.load_dataset`, and the card's sections."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import build_spec, modalities, run
from pipeline.modalities.base import Modality
from tests.conftest import blob_images, load_published, png_bytes


def _image_source(root: Path) -> tuple[dict, int, int]:
    """Two classes of 16×16 images in class folders, one exact duplicate and one broken file."""
    images, labels = blob_images(48, size=16)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("left" if label == 0 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png_bytes(image))
    (root / "left" / "dup.png").write_bytes(png_bytes(images[0]))
    (root / "right" / "broken.png").write_bytes(b"not a png")
    return {"format": "images", "path": str(root)}, 50, 2


def _table_source(root: Path) -> tuple[dict, int, int]:
    """A CSV of 120 rows with two classes, one duplicate row and one row with text in a number column."""
    root.mkdir(parents=True)
    lines = ["age,plan,score,churn"] + [f"{20 + i % 50},{'gold' if i % 3 == 0 else 'basic'},{i / 10},"
                                       f"{'yes' if i % 4 == 0 else 'no'}" for i in range(120)]
    lines += ["20,gold,0.0,yes", "41,gold,abc,no"]
    (root / "rows.csv").write_text("\n".join(lines) + "\n")
    return {"format": "csv", "path": str(root / "rows.csv")}, 122, 2


def _text_source(root: Path) -> tuple[dict, int, int]:
    """A TSV of 62 short messages in two classes, one exact duplicate (after normalising its
    HTML entity and spacing) and one near duplicate (one word changed)."""
    import random

    rng = random.Random(3)
    words = {"offer": "win free prize cash claim call now txt reply bonus mobile".split(),
             "chat": "see you later tonight dinner home love busy meeting soon".split()}
    lines = ["label\tmessage"]
    for i in range(60):
        label = "offer" if i % 3 == 0 else "chat"
        lines.append(f"{label}\t{' '.join(rng.choice(words[label]) for _ in range(8 + i % 7))} {i}")
    first = lines[1].split("\t")[1]
    lines.append(f"offer\t{first.replace(' ', '  ', 1)}")  # exact duplicate once whitespace is collapsed
    lines.append(f"chat\t{lines[2].split(chr(9))[1].replace(lines[2].split()[2], 'yes', 1)}")  # one word edited
    root.mkdir(parents=True)
    (root / "messages.tsv").write_text("\n".join(lines) + "\n")
    return {"format": "csv", "kind": "text", "path": str(root / "messages.tsv"), "delimiter": "\t",
            "text_column": "message"}, 62, 2


SOURCES = {"image": (_image_source, {"model": "cvae", "options": {"width": 8}}, {"classifier_epochs": 1}),
           "table": (_table_source, {"model": "tvae"}, {}),
           "text": (_text_source, {"model": "textlm", "options": {"width": 16, "layers": 1, "heads": 2,
                                                                  "vocab_size": 300}}, {})}
LABEL_COLUMNS = {"table": "churn"}
FORMATS = {"image": {"format": "images"}, "table": {"format": "csv"}, "text": {"format": "csv", "kind": "text"}}


def test_every_registered_modality_is_in_this_suite_and_implements_the_interface():
    assert set(SOURCES) == set(modalities.MODALITIES)
    required = [name for name, member in vars(Modality).items()
                if callable(member) and "raise NotImplementedError" in inspect.getsource(member)]
    assert {"collect", "stage", "classifier", "split", "training_data", "sample", "evaluate", "publish",
            "card"} <= set(required)
    for kind, path in modalities.MODALITIES.items():
        module, name = path.split(":")
        plugin = getattr(__import__(module, fromlist=[name]), name)
        assert issubclass(plugin, Modality)
        missing = [method for method in required if getattr(plugin, method) is getattr(Modality, method)]
        assert missing == [], f"{kind}: {missing}"


def _spec(tmp_path: Path, kind: str, source: dict, root: str, target: str, synthesis: bool = True):
    _, synthesize, evaluate = SOURCES[kind]
    return build_spec({
        "name": f"conformance-{kind}", "seed": 7, "run_root": str(tmp_path / root), "source": source,
        "preprocess": {"max_reject_fraction": 0.2},
        "annotate": {"label_column": LABEL_COLUMNS[kind]} if kind in LABEL_COLUMNS else {},
        "synthesize": {**synthesize, "epochs": 1, "samples_per_class": 8, "rows": 16, "enabled": synthesis},
        "evaluate": {**evaluate, "gates": {}}, "publish": {"to": str(tmp_path / target), "rows_per_shard": 40}})


@pytest.fixture(scope="module", params=sorted(SOURCES))
def runs(request, tmp_path_factory):
    kind = request.param
    tmp_path = tmp_path_factory.mktemp(f"conformance-{kind}")
    source, rows_in, rejected = SOURCES[kind][0](tmp_path / "source")
    reports = {name: run(_spec(tmp_path, kind, source, root, name, synthesis))
               for name, root, synthesis in (("first", "runs-a", True), ("second", "runs-b", True),
                                             ("again", "runs-a", False))}
    return kind, tmp_path, reports, rows_in, rejected


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def test_rows_are_accounted_for_and_rejects_keep_their_reason(runs):
    kind, tmp_path, reports, rows_in, rejected = runs
    lineage = reports["first"].lineage
    counts = lineage["rows"]
    assert counts["rows_in"] == rows_in and counts["rows_rejected"] == rejected
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"] + counts["pending_review"]
    assert counts["rows_out"] == sum(counts["splits"].values()) and set(counts["splits"]) == {"train", "test"}
    assert "dedup: duplicate" in counts["rejected_by_reason"]
    rejects = pq.read_table(Path(reports["first"].run_dir) / "rejects" / "rejects.parquet").to_pylist()
    assert len(rejects) == rejected and all(r["source_ref"] and r["reason"] for r in rejects)


def test_the_stage_is_keyed_by_its_inputs_and_reused(runs):
    kind, tmp_path, reports, _, _ = runs
    first, again = reports["first"].lineage["stage"], reports["again"].lineage["stage"]
    assert not first["reused"] and again["reused"] and again["key"] == first["key"]
    assert first["folder"].rstrip("/").endswith(f"conformance-{kind}/stages/{first['key']}")
    assert reports["second"].lineage["stage"]["key"] == first["key"]  # the key names the inputs, not the run root


def test_the_same_spec_and_seed_give_the_same_dataset(runs):
    kind, tmp_path, reports, _, _ = runs
    first, second, again = (_files(tmp_path / name) for name in ("first", "second", "again"))
    assert any(name.startswith("synthetic/") for name in first) and any(name.startswith("data/") for name in first)
    assert first == second
    assert again == {name: data for name, data in first.items() if name.startswith("data/")}  # from the reused stage
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("first", "second")]
    assert metrics[0] == metrics[1] and metrics[0]


def test_features_round_trip_through_load_dataset(runs):
    kind, tmp_path, reports, _, _ = runs
    out = tmp_path / "first"
    counts = reports["first"].lineage["rows"]
    real = load_published(str(out), tmp_path=tmp_path)
    synthetic = load_published(str(out), "synthetic", tmp_path=tmp_path)["train"]
    shard = pq.read_schema(next((out / "data").glob("train-*.parquet")))
    written = json.loads(shard.metadata[b"huggingface"])["info"]["features"]
    assert {split: len(rows) for split, rows in real.items()} == counts["splits"]
    assert len(synthetic) == counts["synthetic"] > 0
    assert real["train"].features.to_dict() == written == synthetic.features.to_dict()
    assert set(synthetic["origin"]) == {"synthetic"} and set(real["test"]["origin"]) == {"real"}


def test_the_card_has_every_section_and_names_its_configs(runs):
    kind, tmp_path, reports, _, _ = runs
    card = (tmp_path / "first" / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert [c["config_name"] for c in meta["configs"]] == ["default", "synthetic"]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["default", "synthetic"]
    assert meta["task_categories"] and "datakiln" in meta["tags"]
    for section in ("## Contents", "## Rejected records", "## Labels", "## Quality of the synthetic data",
                    "## Lineage"):
        assert section in body, section
    for plot in [line.split("(")[1].rstrip(")") for line in body.splitlines() if line.startswith("![")]:
        assert (tmp_path / "first" / plot).stat().st_size > 1000, plot  # every plot the card shows is there


def test_the_metrics_the_console_and_summary_name_are_measured(runs):
    kind, tmp_path, reports, _, _ = runs
    plugin = modalities.for_spec(_spec(tmp_path, kind, {**FORMATS[kind], "path": str(tmp_path)}, "runs-a", "x"),
                                 modalities.RunContext("r", str(tmp_path), "h", {}))
    measured = reports["first"].metrics
    assert plugin.key_metrics and plugin.logged_metrics
    assert [m for m in (*plugin.key_metrics, *plugin.logged_metrics) if m not in measured] == []

"""The review round trip with Label Studio.

Export: the rows the model labeler was not sure about go to `<run_dir>/review/`:
`tasks.json` (Label Studio import tasks, each with the model's guess as a prediction),
`images/NNNNNNN.png` beside it for image rows, and `label_config.xml` (a Choices interface
with the class names). Import: `datakiln annotate import RUN EXPORT.json` reads a Label Studio
JSON export and merges its choices into `<run_root>/<name>/human_labels.parquet`, keyed by
`source_ref`; the next run of the spec labels those rows `human`.
"""

from __future__ import annotations

import json
import os
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SourceError

HUMAN_LABELS = "human_labels.parquet"


def human_labels_path(run_dir: str) -> str:
    """Human labels belong to the spec name (the run dir's parent), so every later run finds them."""
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), HUMAN_LABELS)


def read_human_labels(run_dir: str) -> dict[str, str]:
    path = human_labels_path(run_dir)
    if not os.path.exists(path):
        return {}
    table = pq.read_table(path)
    return dict(zip(table["source_ref"].to_pylist(), table["label"].to_pylist()))


def _label_config(class_names: list[str], image: bool) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    target = '  <Image name="image" value="$image"/>' if image else '  <Text name="row" value="$row"/>'
    return (f"<View>\n{target}\n  <Choices name=\"label\" toName=\"{'image' if image else 'row'}\" "
            f"choice=\"single\">\n{choices}\n  </Choices>\n</View>\n")


def export_review(run_dir: str, run_id: str, refs: list[str], annotation, images: np.ndarray | None = None,
                  values: list[dict[str, Any]] | None = None) -> str:
    """Write the review queue (`annotation.review`, with the model's guesses) as Label Studio
    tasks: images as PNG files beside them, table rows as their values. Return the tasks file."""
    from pipeline.publish import encode_png

    rows, guesses = annotation.review, annotation.review_guess
    confidence, class_names = annotation.review_confidence, annotation.class_names
    folder = os.path.join(run_dir, "review")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    tasks = []
    for n, row in enumerate(rows):
        data: dict[str, Any] = {"source_ref": refs[row], "row": int(row)}
        if images is not None:
            name = f"images/{int(row):07d}.png"
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(encode_png(images[n]))
            data["image"] = name
        else:
            data["row"] = json.dumps(values[n], default=str)
        prediction = {"model_version": f"datakiln-{run_id}", "score": float(confidence[n]),
                      "result": [{"from_name": "label", "to_name": "image" if images is not None else "row",
                                  "type": "choices", "value": {"choices": [class_names[guesses[n]]]}}]}
        tasks.append({"id": n + 1, "data": data, "predictions": [prediction]})
    path = os.path.join(folder, "tasks.json")
    with open(path, "w") as handle:
        json.dump(tasks, handle, indent=1)
    with open(os.path.join(folder, "label_config.xml"), "w") as handle:
        handle.write(_label_config(class_names, images is not None))
    return path


def _choice(task: dict[str, Any]) -> str | None:
    """The last non-cancelled annotation's single choice, if any."""
    for annotation in reversed(task.get("annotations") or []):
        if annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            choices = (result.get("value") or {}).get("choices")
            if result.get("type") == "choices" and choices:
                return str(choices[0])
    return None


def import_review(run_dir: str, export: str) -> tuple[int, str]:
    """Merge a Label Studio JSON export into the spec's human labels; return (labels, file)."""
    lineage_path = os.path.join(run_dir, "lineage.json")
    if not os.path.exists(lineage_path):
        raise SourceError(f"{run_dir}: not a datakiln run directory (no lineage.json)")
    with open(lineage_path) as handle:
        class_names = json.load(handle)["class_names"]
    try:
        with open(export) as handle:
            tasks = json.load(handle)
    except FileNotFoundError:
        raise SourceError(f"{export}: no such file") from None
    except json.JSONDecodeError as err:
        raise SourceError(f"{export}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(tasks, list):
        raise SourceError(f"{export}: expected a Label Studio JSON export (a list of tasks)")
    found: dict[str, str] = {}
    for index, task in enumerate(tasks):
        ref = (task.get("data") or {}).get("source_ref")
        if not ref:
            raise SourceError(f"{export}: task {index} has no data.source_ref (was it exported by datakiln?)")
        choice = _choice(task)
        if choice is None:
            continue
        if choice not in class_names:
            raise SourceError(f"{export}: task {index} ({ref}): label '{choice}' is not one of the run's classes "
                              f"({', '.join(class_names)})")
        found[ref] = choice
    path = human_labels_path(run_dir)
    merged = {**(read_human_labels(run_dir)), **found}
    pq.write_table(pa.table({"source_ref": list(merged), "label": list(merged.values())}), path)
    return len(found), path

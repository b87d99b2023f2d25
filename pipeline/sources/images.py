"""A folder of image files; the label is the class sub-folder (`root/<class>/<file>`).

Every file is read (hidden files aside): one that does not decode is rejected later with a
reason, never skipped silently.
"""

from __future__ import annotations

import posixpath

import numpy as np

from pipeline import io
from pipeline.errors import SourceError
from pipeline.sources.base import Collected, paths_dataset
from pipeline.spec import SourceSpec

FILES_PER_BLOCK = 1024


def _read_files(batch: dict[str, np.ndarray], root: io.Location) -> dict[str, np.ndarray]:
    contents, labels, refs = [], [], []
    for path in batch["path"]:
        try:
            with root.fs.open(path, "rb") as handle:
                contents.append(handle.read())
        except OSError:
            contents.append(b"")  # unreadable: the decode step rejects it with a reason
        relative = posixpath.relpath(path, root.path)
        labels.append(posixpath.dirname(relative).split("/")[0] if "/" in relative else "")
        refs.append(root.uri(path))
    return {
        "image_bytes": np.array(contents, dtype=object),
        "label": np.array(labels, dtype=object),
        "source_ref": np.array(refs, dtype=object),
    }


def read(spec: SourceSpec) -> Collected:
    root = io.require_exists(spec.path, "image folder", spec.storage_options)
    if not root.fs.isdir(root.path):
        raise SourceError(f"{spec.path}: image folder: not a directory")
    paths = [p for p in io.list_files(root) if not posixpath.basename(p).startswith(".")]
    if spec.limit:
        paths = paths[: spec.limit]
    if not paths:
        raise SourceError(f"{spec.path}: image folder: no files found")
    dataset = paths_dataset(paths, FILES_PER_BLOCK).map_batches(_read_files, fn_kwargs={"root": root}, batch_size=None)
    return Collected(dataset=dataset, fingerprints=[io.fingerprint(root, paths)])

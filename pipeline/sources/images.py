"""A folder of image files; the label is the class sub-folder (`root/<class>/<file>`).

Every file is read (hidden files aside): one that cannot be read (a broken link, a pipe, an
I/O error) or does not decode is rejected with a reason, never skipped silently.
"""

from __future__ import annotations

import posixpath

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from cluster.runtime import row_pass_compute
from pipeline import io
from pipeline.errors import SourceError
from pipeline.ops.base import REJECT_REASON
from pipeline.sources.base import Collected, paths_dataset
from pipeline.spec import SourceSpec

MAX_FILES_PER_BLOCK = 16_384
BYTES_PER_BLOCK = 64 * 2**20
"""A read task takes the files of ~64 MiB, at most 16,384 (digits and thumbnails: a task's
start and Ray Data noticing its end cost ~0.2 s, so a task needs ~1 s of work; at 4,096
MNIST files it had 0.2 s and the two workers of 2 cores were idle half the time, measured)."""
PREVIEW_FILES = 64
"""Files read on the driver to find the images' shape before the stage's pass."""


def _relative(path: str, prefix: str, root: str) -> str:
    """`path` relative to the folder `root` (`prefix`: root with one trailing slash); a string
    cut where the listing gave paths under the root (posixpath.relpath costs ~5 µs a file)."""
    return path[len(prefix):] if path.startswith(prefix) else posixpath.relpath(path, root)


def _read_files(batch: dict[str, np.ndarray], root: io.Location) -> dict[str, np.ndarray]:
    contents, labels, refs, reasons = [], [], [], []
    prefix = root.path.rstrip("/") + "/"
    opener = open if isinstance(root.fs, LocalFileSystem) else root.fs.open  # fsspec's wrapper: ~15 µs a file
    for path, regular in zip(batch["path"], batch["regular"]):
        content, reason = b"", ""
        if not regular:  # a broken link, a pipe, a device: never opened (a pipe would block)
            reason = "read: not a regular file"
        else:
            try:
                with opener(path, "rb") as handle:
                    content = handle.read()
            except OSError as err:
                reason = f"read: unreadable file ({type(err).__name__}: {err.strerror or err})"
        contents.append(content)
        reasons.append(reason)
        relative = _relative(path, prefix, root.path)
        labels.append(posixpath.dirname(relative).split("/")[0] if "/" in relative else "")
        refs.append(root.ref(path))
    return {
        "image_bytes": np.array(contents, dtype=object),
        "label": np.array(labels, dtype=object),
        "source_ref": np.array(refs, dtype=object),
        REJECT_REASON: np.array(reasons, dtype=object),
    }


def read(spec: SourceSpec) -> Collected:
    root = io.require_exists(spec.path, "image folder", spec.storage_options)
    if not root.fs.isdir(root.path):
        raise SourceError(f"{spec.path}: image folder: not a directory")
    prefix = root.path.rstrip("/") + "/"
    files = {p: i for p, i in io.list_files(root).items()  # hidden files and folders (.git, .ipynb_checkpoints)
             if not ("/" + _relative(p, prefix, root.path)).count("/.")}
    if spec.limit:
        files = dict(list(files.items())[: spec.limit])
    paths = list(files)
    if not paths:
        raise SourceError(f"{spec.path}: image folder: no files found")
    regular = [files[p].regular for p in paths]
    mean_size = max(1, sum(files[p].size for p in paths) // len(paths))
    per_block = min(MAX_FILES_PER_BLOCK, BYTES_PER_BLOCK // mean_size)
    dataset = paths_dataset(paths, per_block, regular=regular).map_batches(
        _read_files, fn_kwargs={"root": root}, batch_size=None, compute=row_pass_compute())
    first = _read_files({"path": paths[:PREVIEW_FILES], "regular": regular[:PREVIEW_FILES]}, root)
    preview = [dict(zip(first, values)) for values in zip(*first.values())]
    return Collected(dataset=dataset, fingerprints=[io.fingerprint(root, files)], rows=len(paths), preview=preview)

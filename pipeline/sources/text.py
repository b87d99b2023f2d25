"""Plain text files (one file, a folder or a glob): one document per non-empty line, or one
per file. Files are fanned out over the cluster and streamed in batches; each document keeps
`source_ref = <file URI>#<line>` (or the file URI when the file is the document)."""

from __future__ import annotations

import io as io_text
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline import io
from pipeline.errors import SourceError
from pipeline.sources.base import Collected, paths_dataset
from pipeline.spec import SourceSpec

SUFFIXES = (".txt", ".text", ".md", ".txt.gz")
DOCUMENTS_PER_BATCH = 8192


def _batch(texts: list[str], refs: list[str]) -> pa.Table:
    return pa.table({"text": pa.array(texts, pa.string()), "source_ref": pa.array(refs, pa.string())})


def _read_documents(batch: dict[str, np.ndarray], root: io.Location, spec: SourceSpec) -> Iterator[pa.Table]:
    for path in batch["path"]:
        uri, ref = root.uri(path), root.ref(path)
        line = 0
        try:
            with root.fs.open(path, "rb", compression="infer") as handle:
                reader = io_text.TextIOWrapper(handle, encoding=spec.encoding, errors="strict", newline=None)
                if spec.documents == "file":
                    yield _batch([reader.read()], [ref])
                    continue
                texts, refs = [], []
                for line, text in enumerate(reader, start=1):
                    text = text.rstrip("\n")
                    if not text.strip():
                        continue
                    texts.append(text)
                    refs.append(f"{ref}#{line}")
                    if len(texts) == DOCUMENTS_PER_BATCH:
                        yield _batch(texts, refs)
                        texts, refs = [], []
                if texts:
                    yield _batch(texts, refs)
        except UnicodeDecodeError as err:
            raise SourceError(f"{uri}: line {line + 1} is not {spec.encoding} text ({err.reason}); "
                              "set source.encoding (e.g. latin1)") from None
        except OSError as err:
            raise SourceError(f"{uri}: cannot read: {err.strerror or err}") from None


def read(spec: SourceSpec) -> Collected:
    root = io.require_exists(spec.path, "text source", spec.storage_options)
    files = io.list_files(root, SUFFIXES if root.fs.isdir(root.path) else None)
    paths = list(files)
    if not paths:
        raise SourceError(f"{spec.path}: no text files found ({', '.join(SUFFIXES)})")
    dataset = paths_dataset(paths, per_block=1).map_batches(
        _read_documents, fn_kwargs={"root": root, "spec": spec}, batch_size=1, batch_format="numpy")
    if spec.limit:
        dataset = dataset.limit(spec.limit)
    return Collected(dataset=dataset, fingerprints=[io.fingerprint(root, files)])

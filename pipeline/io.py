"""All I/O on user paths goes through fsspec: resolve once, fingerprint, stage and commit."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import SourceError

_FULL_HASH_LIMIT = 256 * 2**20  # hash whole files up to this size; larger ones by metadata


@dataclass(frozen=True)
class Location:
    """A resolved fsspec URL: the filesystem, the path inside it, and the original URL."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, self.fs.unstrip_protocol(path))

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    fs, path = url_to_fs(url, **(storage_options or {}))
    return Location(fs, path, url)


def require_exists(url: str, what: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve `url` and fail with one line naming it when nothing is there."""
    loc = resolve(url, storage_options)
    if any(ch in loc.path for ch in "*?["):
        if not loc.fs.glob(loc.path):
            raise SourceError(f"{url}: {what}: no file matches this pattern")
    elif not loc.fs.exists(loc.path):
        raise SourceError(f"{url}: {what}: no such file or directory")
    return loc


def list_files(loc: Location, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every file under a folder, matching a glob, or the file itself; sorted for determinism."""
    if any(ch in loc.path for ch in "*?["):
        paths = loc.fs.glob(loc.path)
        paths = [p for p in paths if loc.fs.isfile(p)]
    elif loc.fs.isdir(loc.path):
        paths = loc.fs.find(loc.path)
    else:
        paths = [loc.path]
    if suffixes:
        paths = [p for p in paths if p.lower().endswith(suffixes)]
    return sorted(paths)


def fingerprint(loc: Location, paths: list[str]) -> dict[str, Any]:
    """Identify the input: sha256 of content for small single files, of (path, size, mtime/etag) otherwise."""
    digest = hashlib.sha256()
    total = 0
    if len(paths) == 1 and loc.fs.size(paths[0]) <= _FULL_HASH_LIMIT:
        with loc.fs.open(paths[0], "rb") as handle:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
                total += len(chunk)
        return {"url": loc.url, "files": 1, "bytes": total, "sha256": digest.hexdigest(), "method": "content"}
    for path in paths:
        info = loc.fs.info(path)
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{path}\0{info.get('size')}\0{stamp}\n".encode())
        total += info.get("size") or 0
    return {"url": loc.url, "files": len(paths), "bytes": total, "sha256": digest.hexdigest(), "method": "listing"}


def sha256_file(loc: Location) -> str:
    digest = hashlib.sha256()
    with loc.fs.open(loc.path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def commit(staging: Location, target: Location) -> None:
    """Make a fully written staging folder visible at `target`, replacing what was there.

    On a local filesystem this is a rename (atomic for readers of the folder). On object
    stores there is no rename: the copy happens only after every file is complete, so an
    interrupted run never leaves a half-written dataset at the target.
    """
    fs = target.fs
    if fs.exists(target.path):
        fs.rm(target.path, recursive=True)
    parent = posixpath.dirname(target.path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.mv(staging.path, target.path, recursive=True)

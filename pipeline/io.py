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


def list_files(loc: Location, suffixes: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """Every file under a folder, matching a glob, or the file itself, with its info (size,
    mtime/ETag) from the same listing call; sorted by path for determinism."""
    if any(ch in loc.path for ch in "*?["):
        infos = {p: i for p, i in loc.fs.glob(loc.path, detail=True).items() if i.get("type") == "file"}
    elif loc.fs.isdir(loc.path):
        infos = loc.fs.find(loc.path, detail=True)
    else:
        infos = {loc.path: loc.fs.info(loc.path)}
    if suffixes:
        infos = {p: i for p, i in infos.items() if p.lower().endswith(suffixes)}
    return dict(sorted(infos.items()))


def fingerprint(loc: Location, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Identify the input: sha256 of content for small single files, of (path, size, mtime/etag) otherwise."""
    digest = hashlib.sha256()
    total = 0
    if len(files) == 1 and (next(iter(files.values())).get("size") or 0) <= _FULL_HASH_LIMIT:
        with loc.fs.open(next(iter(files)), "rb") as handle:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
                total += len(chunk)
        return {"url": loc.url, "files": 1, "bytes": total, "sha256": digest.hexdigest(), "method": "content"}
    for path, info in files.items():
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{path}\0{info.get('size')}\0{stamp}\n".encode())
        total += info.get("size") or 0
    return {"url": loc.url, "files": len(files), "bytes": total, "sha256": digest.hexdigest(), "method": "listing"}


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
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        fs.mv(staging.path, target.path, recursive=True)
        return
    files = fs.find(staging.path)  # object stores: copy file by file (no directory keys), then drop staging
    fs.copy(files, [posixpath.join(target.path, posixpath.relpath(f, staging.path)) for f in files])
    fs.rm(staging.path, recursive=True)

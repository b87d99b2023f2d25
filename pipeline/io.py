"""All I/O on user paths goes through fsspec: resolve once, list, fingerprint (publishing: `pipeline.commit`)."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

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

    def ref(self, path: str) -> str:
        """`path` relative to this source (a folder, a glob's fixed part or a file's folder):
        what published rows carry in `source_ref`, so no local layout or user name leaks."""
        root = self.path
        magic = min((root.index(ch) for ch in "*?[" if ch in root), default=None)
        if magic is not None:
            root = posixpath.dirname(root[:magic])
        elif path == root or not path.startswith(root.rstrip("/") + "/"):
            root = posixpath.dirname(root)
        if not root:
            return path.lstrip("/")
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix) and "/." not in path[len(prefix) - 1:]:  # a plain path under root: cut it
            return path[len(prefix):]
        return posixpath.relpath(path, root)


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


class FileInfo(NamedTuple):
    """What datakiln keeps of a listed file (a few dozen bytes, so 10^6 files fit easily)."""

    size: int
    stamp: str  # ETag or mtime: changes when the content does
    regular: bool  # False for broken links, pipes, devices


def _file_info(info: dict[str, Any]) -> FileInfo:
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return FileInfo(info.get("size") or 0, str(stamp), info.get("type") == "file")


def list_files(loc: Location, suffixes: tuple[str, ...] | None = None) -> dict[str, FileInfo]:
    """Every file under a folder, matching a glob, or the file itself, with its size, stamp and
    type from the listing itself; sorted by path for determinism. Folders are walked one
    directory at a time, so fsspec's full info dicts never pile up."""
    if any(ch in loc.path for ch in "*?["):
        found = {p: _file_info(i) for p, i in loc.fs.glob(loc.path, detail=True).items() if i.get("type") != "directory"}
    elif loc.fs.isdir(loc.path) and isinstance(loc.fs, LocalFileSystem):
        found = dict(_walk_local(loc.path))
    elif loc.fs.isdir(loc.path):
        found = {}
        for folder, _, files in loc.fs.walk(loc.path, detail=True):
            for name, info in files.items():
                found[posixpath.join(folder, name)] = _file_info(info)
    else:
        found = {loc.path: _file_info(loc.fs.info(loc.path))}
    if suffixes:
        found = {p: i for p, i in found.items() if p.lower().endswith(suffixes)}
    return dict(sorted(found.items()))


def _walk_local(root: str) -> Iterator[tuple[str, FileInfo]]:
    """A local folder's files from `os.scandir`, as fsspec's walk reports them (links are
    followed, a broken link or a pipe is not regular) at a fraction of its cost; a folder
    reached twice through links is walked once."""
    folders, seen = [root], set()
    while folders:
        folder = folders.pop()
        status = os.stat(folder)
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            continue
        seen.add(identity)
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    status = entry.stat()
                except OSError:  # a broken link
                    yield entry.path, FileInfo(0, "", False)
                    continue
                if stat.S_ISDIR(status.st_mode):
                    folders.append(entry.path)
                else:
                    yield entry.path, FileInfo(status.st_size, str(status.st_mtime), stat.S_ISREG(status.st_mode))


def fingerprint(loc: Location, files: dict[str, FileInfo]) -> dict[str, Any]:
    """Identify the input: sha256 of content for small single files, of (path, size, mtime/etag) otherwise."""
    digest = hashlib.sha256()
    total = 0
    if len(files) == 1 and next(iter(files.values())).size <= _FULL_HASH_LIMIT:
        with loc.fs.open(next(iter(files)), "rb") as handle:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
                total += len(chunk)
        return {"url": loc.url, "files": 1, "bytes": total, "sha256": digest.hexdigest(), "method": "content"}
    for path, info in files.items():
        digest.update(f"{path}\0{info.size}\0{info.stamp}\n".encode())
        total += info.size
    return {"url": loc.url, "files": len(files), "bytes": total, "sha256": digest.hexdigest(), "method": "listing"}


def sha256_file(loc: Location) -> str:
    digest = hashlib.sha256()
    with loc.fs.open(loc.path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()

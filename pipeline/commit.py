"""Make a staged dataset visible at its target without ever destroying what datakiln did not write.

Every published dataset holds a marker, `.datakiln.json`, listing the files datakiln
wrote there. Nothing that the marker does not list is ever removed or replaced:

- a target that exists, holds files and has no marker is refused unless the user says
  `publish.overwrite` (then the dataset is written beside those files, which stay);
- on a local disk, a target holding only datakiln's files is replaced by renames: the old
  version is renamed aside, the new one renamed in, then the old one deleted. A crash
  between the two renames leaves the old version aside; `recover` (run before every
  publish) renames it back, or finishes deleting it once the new one is in. Shard names
  carry a fingerprint of their folder's content (`data/train-<sha256[:12]>-00000-of-00001.parquet`):
  `datasets` caches a local dataset under its folder's name and its card's `configs:`, so
  with fixed names `load_dataset` would return an earlier version of a republished folder
  (or of another folder with the same name) from its cache;
- everywhere else (object stores, or a local folder shared with other files) the new
  version's shards get new names, `README.md` — whose `configs:` name the exact data
  files — is written as the single-object commit point, and only then are the old
  version's files deleted. A reader sees the old or the new dataset, never a mix;
- on the Hugging Face Hub (`hf://`), the new files and the deletion of the old ones are
  one commit, based on the revision read before it.

The marker is updated before any new file is written (new names are listed as pending),
so a crash at any instant leaves every file datakiln wrote known as datakiln's. A lock
beside the target (`NAME.datakiln-lock`, created exclusively) keeps two publishes from
replacing one dataset at once: the second fails with one line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import DatakilnError
from pipeline.io import Location

MARKER = ".datakiln.json"
ASIDE_SUFFIX = ".datakiln-old"
LOCK_SUFFIX = ".datakiln-lock"
STALE_LOCK_S = 24 * 3600
CARD = "README.md"
SHARD_FOLDERS = ("data", "synthetic")


class TargetError(DatakilnError):
    """The publish target holds something datakiln must not touch."""


def _relative(root: str, paths: list[str]) -> list[str]:
    return sorted(posixpath.relpath(p, root) for p in paths)


def _files(loc: Location) -> list[str]:
    """Every file under `loc`, relative to it (none when it does not exist)."""
    if not loc.fs.exists(loc.path):
        return []
    if not loc.fs.isdir(loc.path):
        raise TargetError(f"publish.to {loc.url}: is a file, not a folder")
    return _relative(loc.path, loc.fs.find(loc.path))


def read_marker(loc: Location) -> dict[str, Any] | None:
    marker = loc.join(MARKER)
    if not loc.fs.exists(marker.path):
        return None
    with loc.fs.open(marker.path, "r") as handle:
        try:
            content = json.load(handle)
        except ValueError:
            raise TargetError(f"{marker.url}: not a datakiln marker (invalid JSON); move it away") from None
    if not isinstance(content, dict) or not isinstance(content.get("files"), list):
        raise TargetError(f"{marker.url}: not a datakiln marker; move it away")
    return content


_PARTIAL = re.compile(r"^(.*)\.partial-[0-9a-f]{8}$")
"""What `_write_atomic` leaves when killed between its write and its rename."""


def _owned(marker: dict[str, Any] | None, present: list[str] = ()) -> set[str]:
    """The files datakiln wrote: those the marker lists, and the partial writes of them (or of
    the marker) that a crash left among `present`."""
    if marker is None:
        return set()
    listed = {*marker.get("files", []), *marker.get("pending", []), MARKER}
    partials = {name for name in present if (m := _PARTIAL.match(name)) and m.group(1) in listed}
    return listed | partials


def _write_marker(loc: Location, files: list[str], pending: list[str], version: str) -> None:
    payload = json.dumps({"written_by": "datakiln", "version": version, "files": sorted(set(files)),
                          "pending": sorted(set(pending) - set(files)),
                          "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)
    _write_atomic(loc.join(MARKER), payload.encode())


def _is_local(loc: Location) -> bool:
    return isinstance(loc.fs, LocalFileSystem)


def _write_atomic(loc: Location, content: bytes) -> None:
    """One object PUT on object stores; a temporary file renamed over the old one locally."""
    if not _is_local(loc):
        loc.fs.pipe_file(loc.path, content)
        return
    partial = f"{loc.path}.partial-{secrets.token_hex(4)}"
    with loc.fs.open(partial, "wb") as handle:
        handle.write(content)
    loc.fs.mv(partial, loc.path)


def _aside(target: Location) -> Location:
    return Location(target.fs, target.path.rstrip("/") + ASIDE_SUFFIX, target.url.rstrip("/") + ASIDE_SUFFIX)


def _remove(loc: Location, names: set[str]) -> None:
    """Delete exactly these files under `loc` (the marker last, when listed), then the
    folders they leave empty."""
    for name in sorted(names - {MARKER}) + sorted(names & {MARKER}):
        path = loc.join(name).path
        if loc.fs.exists(path):
            loc.fs.rm_file(path)
    if _is_local(loc):
        for folder in sorted({posixpath.dirname(loc.join(n).path) for n in names}, key=len, reverse=True):
            while folder.startswith(loc.path) and loc.fs.exists(folder) and not loc.fs.ls(folder):
                loc.fs.rmdir(folder)
                folder = posixpath.dirname(folder)


def _remove_empty_folders(root: str) -> None:
    """Remove the folders under `root` (and `root`) that hold no file; `rmdir` never removes
    anything else."""
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: len(entry[0]), reverse=True):
        try:
            os.rmdir(folder)
        except OSError:  # not empty
            pass


def recover(target: Location) -> str | None:
    """Finish or roll back a local swap that a crash interrupted; say what was done."""
    aside = _aside(target)
    if not _is_local(target) or not target.fs.exists(aside.path):
        return None
    if target.fs.exists(target.path):
        _remove(aside, _owned(read_marker(aside), _files(aside)))
        _remove_empty_folders(aside.path)  # also what an earlier recovery, killed midway, left
        left = _files(aside)
        return f"removed the previous version left at {aside.url}" + (
            f" (kept {len(left)} files datakiln did not write there)" if left else "")
    target.fs.mv(aside.path, target.path, recursive=True)
    return f"restored the previous version of {target.url} (a publish was interrupted)"


def check_target(target: Location, overwrite: bool) -> None:
    """Fail before any work when publishing to `target` would need to remove or replace a
    file datakiln did not write."""
    recover(target)
    present = _files(target)
    foreign = sorted(set(present) - _owned(read_marker(target), present))
    if foreign and read_marker(target) is None and not overwrite:
        raise TargetError(
            f"publish.to {target.url}: exists and was not written by datakiln ({len(foreign)} files, e.g. "
            f"{foreign[0]}); choose a new folder, or set publish.overwrite: true (--overwrite) to publish beside "
            "those files, which are never removed")


def _exact_configs(card: str, files: list[str]) -> str:
    """The card with every `configs:` data_files pattern replaced by the exact files it matches."""
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    for config in meta.get("configs", []):
        for entry in config.get("data_files", []):
            patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
            entry["path"] = [f for f in files if any(fnmatch.fnmatch(_unversioned(f), p) for p in patterns)]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}"


def data_files(target: Location) -> dict[tuple[str, str], list[str]]:
    """(config, split) → the data files the card at `target` names (what a reader should read)."""
    card = target.join(CARD)
    if not target.fs.exists(card.path):
        return {}
    text = target.fs.cat_file(card.path).decode()
    parts = text.split("---\n", 2)
    meta = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    found = {}
    for config in (meta or {}).get("configs", []) if isinstance(meta, dict) else []:
        for entry in config.get("data_files", []):
            paths = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
            files = [f for p in paths for f in sorted(target.fs.glob(target.join(p).path))]
            found[(config["config_name"], entry["split"])] = files
    return found


def _versioned(name: str, version: str) -> str:
    """`data/train-00000-of-00002.parquet` → `data/train-<version>-00000-of-00002.parquet`."""
    folder, base = posixpath.split(name)
    split, _, rest = base.partition("-")
    return posixpath.join(folder, f"{split}-{version}-{rest}")


def _unversioned(name: str) -> str:
    folder, base = posixpath.split(name)
    parts = base.split("-")
    if folder in SHARD_FOLDERS and len(parts) > 4:  # split-version-NNNNN-of-NNNNN.parquet
        base = "-".join([parts[0], *parts[2:]])
    return posixpath.join(folder, base)


def is_hub(loc: Location) -> bool:
    protocols = loc.fs.protocol if isinstance(loc.fs.protocol, tuple) else (loc.fs.protocol,)
    return "hf" in protocols


def _refuse_clashes(names: list[str], foreign: set[str], target: Location) -> None:
    clashes = sorted(set(names) & foreign)
    if clashes:
        raise TargetError(f"publish.to {target.url}: {clashes[0]} exists and was not written by datakiln; "
                          "datakiln never replaces a file it did not write: move it away")


def _lock(target: Location) -> Location:
    return Location(target.fs, target.path.rstrip("/") + LOCK_SUFFIX, target.url.rstrip("/") + LOCK_SUFFIX)


def _stale(holder: dict[str, Any]) -> bool:
    """A lock whose publisher is gone: a dead process on this host, or older than a day."""
    if time.time() - float(holder.get("since", 0)) > STALE_LOCK_S:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


@contextmanager
def publish_lock(target: Location) -> Iterator[None]:
    """Hold `<target>.datakiln-lock` (an exclusive create: O_EXCL locally, a conditional PUT on
    object stores) while publishing, so that two runs never replace one dataset at once; a
    lock left by a publisher that died is taken over."""
    lock = _lock(target)
    if _is_local(target):
        target.fs.makedirs(posixpath.dirname(lock.path), exist_ok=True)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": secrets.token_hex(8)}
    for attempt in (1, 2):
        try:
            target.fs.pipe_file(lock.path, json.dumps(mine).encode(), mode="create")
            break
        except FileExistsError:
            try:
                holder = json.loads(target.fs.cat_file(lock.path))
            except (FileNotFoundError, ValueError):
                holder = {}
            if attempt == 1 and _stale(holder):
                target.fs.rm_file(lock.path)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
            raise TargetError(f"publish.to {target.url}: another publish is in progress (pid {holder.get('pid')} on "
                              f"{holder.get('host')} since {since}); run again when it has ended") from None
    try:
        yield
    finally:
        try:
            if json.loads(target.fs.cat_file(lock.path)).get("token") == mine["token"]:
                target.fs.rm_file(lock.path)
        except (FileNotFoundError, ValueError):
            pass


def commit(staging: Location, target: Location, overwrite: bool = False) -> None:
    """Make the complete dataset in `staging` the one at `target` (see the module's docstring),
    holding the target's publish lock (the Hub checks its parent commit instead)."""
    if is_hub(target):
        _commit(staging, target, overwrite)
        return
    with publish_lock(target):
        _commit(staging, target, overwrite)


def _commit(staging: Location, target: Location, overwrite: bool) -> None:
    check_target(target, overwrite)
    marker = read_marker(target)
    present = _files(target)
    owned = _owned(marker, present)
    foreign = set(present) - owned
    staged = [f for f in _files(staging) if f != MARKER]
    if is_hub(target):
        hub_commit(staging, target, staged, marker, foreign)
    elif _is_local(target) and ((marker is not None and not foreign) or not target.fs.exists(target.path)):
        _swap(staging, target, staged)
    else:
        _replace_in_place(staging, target, staged, owned, foreign)


def content_version(staging: Location, names: list[str]) -> str:
    """A fingerprint of these files (names and bytes): the same content, the same version."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        with staging.fs.open(staging.join(name).path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _fingerprint_shards(staging: Location, staged: list[str]) -> list[str]:
    """Rename each shard folder's files in `staging` to carry the folder's `content_version`."""
    names = {}
    for folder in SHARD_FOLDERS:
        shards = [f for f in staged if posixpath.dirname(f) == folder]
        version = content_version(staging, shards) if shards else ""
        names.update({f: _versioned(f, version) for f in shards})
    for old, new in names.items():
        staging.fs.mv(staging.join(old).path, staging.join(new).path)
    return sorted(names.get(f, f) for f in staged)


def _swap(staging: Location, target: Location, staged: list[str]) -> None:
    staged = _fingerprint_shards(staging, staged)
    card = staging.join(CARD)
    if staging.fs.exists(card.path):
        with staging.fs.open(card.path, "r") as handle:
            text = handle.read()
        _write_atomic(card, _exact_configs(text, staged).encode())
    _write_marker(staging, staged, [], version="")
    fs, aside = target.fs, _aside(target)
    if fs.exists(aside.path):  # what a recovery left: files that appeared in the old version meanwhile
        raise TargetError(f"{aside.url}: holds files datakiln did not write (left from an earlier publish); "
                          "move them away")
    parent = posixpath.dirname(target.path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if fs.exists(target.path):
        fs.mv(target.path, aside.path, recursive=True)
    fs.mv(staging.path, target.path, recursive=True)
    recover(target)  # deletes the old version (only the files its marker lists)


def _replace_in_place(staging: Location, target: Location, staged: list[str], owned: set[str],
                      foreign: set[str]) -> None:
    version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}{secrets.token_hex(3)}"
    names = {f: _versioned(f, version) if posixpath.dirname(f) in SHARD_FOLDERS else f for f in staged}
    _refuse_clashes(list(names.values()), foreign, target)
    old = owned - {MARKER}
    new = sorted(names.values())
    _write_marker(target, sorted(old), sorted(old | set(new)), version)  # new names are datakiln's from now on
    fs = target.fs
    shards_first = sorted(staged, key=lambda f: (posixpath.dirname(f) not in SHARD_FOLDERS, f == CARD))
    for name in shards_first:
        source, destination = staging.join(name), target.join(names[name])
        if name == CARD:  # the commit point: names the exact new files
            with fs.open(source.path, "r") as handle:
                text = handle.read()
            _write_atomic(destination, _exact_configs(text, new).encode())
            continue
        if posixpath.dirname(names[name]) not in ("", "."):
            fs.makedirs(posixpath.dirname(destination.path), exist_ok=True)
        if _is_local(target):
            fs.mv(source.path, destination.path)
        else:
            fs.copy(source.path, destination.path)
    _write_marker(target, new, sorted(old | set(new)), version)
    _remove(target, old - set(new))
    _write_marker(target, new, [], version)
    fs.rm(staging.path, recursive=True)


def hub_plan(staged: list[str], marker: dict[str, Any] | None, foreign: set[str],
             target: Location) -> tuple[list[str], list[str]]:
    """What one Hub commit adds (every staged file and the marker) and deletes (the earlier
    publish's files that this one does not write again; never a file datakiln did not write)."""
    _refuse_clashes(staged, foreign, target)
    return sorted(staged) + [MARKER], sorted(_owned(marker) - {MARKER} - set(staged))


def hub_commit(staging: Location, target: Location, staged: list[str], marker: dict[str, Any] | None,
               foreign: set[str]) -> None:
    """The whole new version as one Hub commit (atomic for readers), based on the revision
    read at the start, so a concurrent publish makes this one fail instead of mixing."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    adds, deletes = hub_plan(staged, marker, foreign, target)
    card = staging.join(CARD)
    if staging.fs.exists(card.path):
        _write_atomic(card, _exact_configs(staging.fs.cat_file(card.path).decode(), staged).encode())
    _write_marker(staging, staged, [], version="")
    where = target.fs.resolve_path(target.path)
    prefix = where.path_in_repo.strip("/")

    def in_repo(name: str) -> str:
        return posixpath.join(prefix, name) if prefix else name

    api = HfApi()
    parent = api.repo_info(where.repo_id, repo_type=where.repo_type, revision=where.revision).sha
    operations = [CommitOperationAdd(path_in_repo=in_repo(name), path_or_fileobj=staging.join(name).path)
                  for name in adds]
    operations += [CommitOperationDelete(path_in_repo=in_repo(name)) for name in deletes]
    api.create_commit(where.repo_id, operations, commit_message=f"datakiln: publish {len(staged)} files",
                      repo_type=where.repo_type, revision=where.revision, parent_commit=parent)
    staging.fs.rm(staging.path, recursive=True)

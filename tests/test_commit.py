"""Publishing never destroys what datakiln did not write, and a crash at any instant of a
publish leaves the old or the new dataset whole (local disk and an S3 bucket on moto)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import io
from pipeline.commit import (MARKER, TargetError, _unversioned, check_target, commit, hub_plan, is_hub, publish_lock,
                             read_marker, recover)
from tests import publish_child
from tests.conftest import ROOT, load_published

KILLS = 20


def _publish(url: str, version: int, options: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.publish_child", url, str(version)] + ([json.dumps(options)] if options else [])
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(url: str, version: int, options: dict | None = None) -> None:
    child = _publish(url, version, options)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err


def read_version(target: io.Location) -> int:
    """The one version the card names, read whole: every listed file exists, every row is of
    that version, and each split has that version's row count."""
    with target.fs.open(target.join("README.md").path, "r") as handle:
        header = yaml.safe_load(handle.read().split("---\n")[1])
    refs: dict[str, list[str]] = {}
    for entry in header["configs"][0]["data_files"]:
        for name in entry["path"]:
            with target.fs.open(target.join(name).path, "rb") as handle:
                refs.setdefault(entry["split"], []).extend(pq.read_table(handle, columns=["source_ref"])["source_ref"].to_pylist())
    versions = {ref.split("#")[0] for split in refs.values() for ref in split}
    assert len(versions) == 1, f"a mix of versions: {versions}"
    version = int(versions.pop()[1:])
    assert {s: len(r) for s, r in refs.items()} == publish_child.rows_of(version)
    return version


def test_a_folder_datakiln_did_not_write_is_refused_and_left_intact(tmp_path):
    target = tmp_path / "mine"
    (target / "notes").mkdir(parents=True)
    (target / "notes" / "thesis.tex").write_text("years of work")
    (target / "README.md").write_text("my project")
    with pytest.raises(TargetError, match=r"mine: exists and was not written by datakiln \(2 files"):
        check_target(io.resolve(str(target)), overwrite=False)
    child = _publish(str(target), 1)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0 and "was not written by datakiln" in err
    assert (target / "notes" / "thesis.tex").read_text() == "years of work"
    assert (target / "README.md").read_text() == "my project"
    assert sorted(os.listdir(target)) == ["README.md", "notes"]


def test_overwrite_publishes_beside_foreign_files_and_replaces_only_its_own(tmp_path):
    target = tmp_path / "repo"
    (target / ".git").mkdir(parents=True)
    (target / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (target / "data").mkdir()
    (target / "data" / "train-mine.parquet").write_bytes(b"user data")
    loc = io.resolve(str(target))
    for version in (1, 2):
        staging = io.resolve(str(tmp_path / f"staging-{version}"))
        publish_child.stage(loc, version, staging)
        commit(staging, loc, overwrite=True)
        assert read_version(loc) == version
        assert (target / ".git" / "HEAD").read_text() == "ref: refs/heads/main"
        assert (target / "data" / "train-mine.parquet").read_bytes() == b"user data"
    marker = read_marker(loc)
    on_disk = {os.path.relpath(os.path.join(d, f), target) for d, _, fs in os.walk(target) for f in fs}
    assert on_disk == set(marker["files"]) | {MARKER, ".git/HEAD", "data/train-mine.parquet"}  # version 1 is gone
    real = load_published(target, tmp_path=tmp_path)
    assert {s: len(d) for s, d in real.items()} == publish_child.rows_of(2)
    # a foreign README.md is never replaced, even with overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("mine")
    staging = io.resolve(str(tmp_path / "staging-3"))
    publish_child.stage(loc, 3, staging)
    with pytest.raises(TargetError, match="README.md exists and was not written by datakiln"):
        commit(staging, io.resolve(str(other)), overwrite=True)
    assert (other / "README.md").read_text() == "mine" and os.listdir(other) == ["README.md"]


def test_a_datakiln_dataset_is_replaced_whole_and_files_added_to_it_are_kept(tmp_path):
    target = tmp_path / "out"
    _finish(str(target), 1)
    assert read_version(io.resolve(str(target))) == 1
    assert [_unversioned(f"data/{name}") for name in sorted(os.listdir(target / "data"))[:2]] == [
        "data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet"]
    _finish(str(target), 2)
    assert read_version(io.resolve(str(target))) == 2
    assert len(os.listdir(target / "data")) == 2 + 6 and not (tmp_path / "out.datakiln-old").exists()
    (target / "README.md.partial-0a1b2c3d").write_text("---")  # what a write killed before its rename leaves
    _finish(str(target), 2)
    assert not (target / "README.md.partial-0a1b2c3d").exists() and len(os.listdir(target / "data")) == 2 + 6
    (target / "my-notes.txt").write_text("kept")
    _finish(str(target), 3)
    assert read_version(io.resolve(str(target))) == 3 and (target / "my-notes.txt").read_text() == "kept"
    assert len(load_published(target, tmp_path=tmp_path)["train"]) == 13


def _kill_loop(url: str, target: io.Location, options: dict | None, after_kill) -> list[str]:
    """Publish versions 1, 2, ... each killed (SIGKILL) at a random instant of its commit;
    after each kill the target holds the previous or the new version, whole."""
    rng = random.Random(0)
    _finish(url, 0, options)
    child = _publish(url, 0, options)  # the time a commit takes, to spread the kills over it
    assert child.stdout.readline().strip() == "committing"
    began = time.perf_counter()
    assert child.stdout.readline().strip() == "done"
    span = time.perf_counter() - began
    child.wait()
    current, outcomes = 0, []
    for version in range(1, KILLS + 1):
        child = _publish(url, version, options)
        assert child.stdout.readline().strip() == "committing"
        time.sleep(rng.uniform(0, span * 1.5))  # mostly inside the commit, some after it
        child.kill()
        child.wait()
        after_kill(target)
        found = read_version(target)
        assert found in (current, version)
        outcomes.append("new" if found == version else "old")
        current = found
    _finish(url, KILLS + 1, options)  # and the next publish after all those crashes succeeds
    assert read_version(target) == KILLS + 1
    return outcomes


def _recover_then_check(target: io.Location) -> None:
    aside = target.path + ".datakiln-old"
    if not os.path.exists(target.path):  # killed between the two renames: the old version is aside, whole
        assert os.path.exists(aside)
        read_version(io.resolve(aside))
    recover(target)
    assert not os.path.exists(aside)


def test_sigkill_at_any_instant_of_a_local_publish_leaves_a_whole_dataset(tmp_path):
    target = io.resolve(str(tmp_path / "out"))
    outcomes = _kill_loop(str(tmp_path / "out"), target, None, _recover_then_check)
    print(f"local: {len(outcomes)} killed publishes: {outcomes.count('old')} old, {outcomes.count('new')} new")
    assert len(outcomes) == KILLS
    leftovers = [name for name in os.listdir(tmp_path) if name != "out"]
    assert all(".staging-v" in name for name in leftovers)  # only staging folders of killed runs


@pytest.fixture(scope="module")
def bucket(moto_endpoint):
    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("crash-tests")
    return options


def test_sigkill_at_any_instant_of_an_s3_publish_leaves_a_whole_dataset(bucket):
    target = io.resolve("s3://crash-tests/crash", bucket)
    outcomes = _kill_loop("s3://crash-tests/crash", target, bucket, lambda t: t.fs.invalidate_cache())
    print(f"s3: {len(outcomes)} killed publishes: {outcomes.count('old')} old, {outcomes.count('new')} new")
    assert len(outcomes) == KILLS
    files = set(target.fs.find(target.path))
    marker = read_marker(target)
    listed = {target.join(f).path for f in marker["files"]} | {target.join(MARKER).path}
    assert listed <= files and not marker["pending"]
    assert all(f in listed for f in files)  # the last publish cleaned what the killed ones left


def test_a_reader_during_s3_replacements_never_sees_a_mix(bucket, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the bucket is the loopback moto server
    url = "s3://crash-tests/live"
    _finish(url, 0, bucket)
    stop, seen, retries, errors = threading.Event(), [], [0], []

    def reader():
        try:
            read_loop()
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(repr(error))

    def read_loop():
        target = io.resolve(url, bucket)
        while not stop.is_set():
            header = yaml.safe_load(target.fs.cat_file(target.join("README.md").path).decode().split("---\n")[1])
            files = {e["split"]: [f"{url}/{name}" for name in e["path"]] for e in header["configs"][0]["data_files"]}
            try:
                loaded = datasets.load_dataset("parquet", data_files=files, storage_options=dict(bucket),
                                               cache_dir=str(tmp_path / f"hf-{len(seen)}-{retries[0]}"))
            except FileNotFoundError:  # a file the card named was deleted after the next commit: read again
                retries[0] += 1
                continue
            versions = {r.split("#")[0] for split in loaded.values() for r in split["source_ref"]}
            counts = {s: len(d) for s, d in loaded.items()}
            seen.append((versions, counts))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 6):
            _finish(url, version, bucket)
    finally:
        stop.set()
        thread.join(timeout=120)
    print(f"reader: {len(seen)} loads, {retries[0]} re-reads after a commit")
    assert not errors, errors[0]
    assert len(seen) >= 3
    for versions, counts in seen:
        assert len(versions) == 1, f"a mix: {versions}"
        assert counts == publish_child.rows_of(int(next(iter(versions))[1:]))


def test_a_hub_publish_is_one_commit_that_touches_only_datakilns_files(tmp_path):
    assert is_hub(io.resolve("hf://datasets/someone/digits")) and not is_hub(io.resolve(str(tmp_path)))
    target = io.resolve(str(tmp_path))
    previous = {"files": ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                          "near_duplicates.png"], "pending": []}
    adds, deletes = hub_plan(["README.md", "data/train-00000-of-00001.parquet"], previous, {".gitattributes"}, target)
    assert adds == ["README.md", "data/train-00000-of-00001.parquet", ".datakiln.json"]
    assert deletes == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "near_duplicates.png"]
    with pytest.raises(TargetError, match="README.md exists and was not written by datakiln"):
        hub_plan(["README.md"], None, {"README.md", ".gitattributes"}, target)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_publish_while_another_holds_the_target_fails_and_a_dead_ones_lock_is_taken_over(tmp_path, bucket, where):
    url = str(tmp_path / "out") if where == "local" else "s3://crash-tests/locked"
    options = None if where == "local" else bucket
    target = io.resolve(url, options)
    _finish(url, 1, options)
    with publish_lock(target):
        child = _publish(url, 2, options)
        _, err = child.communicate(timeout=120)
        assert child.returncode != 0 and "another publish is in progress (pid" in err
        assert read_version(target) == 1  # untouched
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = target.path + ".datakiln-lock"
    target.fs.pipe_file(lock, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                          "since": time.time()}).encode())
    _finish(url, 3, options)  # the dead publisher's lock is taken over
    assert read_version(target) == 3 and not target.fs.exists(lock)

"""One real local Ray runtime per test session; small generated inputs; offline HF."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATAKILN_SHARED") or ROOT.parent / "shared")
"""The project's shared folder (real data in `data/`, KubeRay CRD schemas in `schemas/`):
`../shared` beside the checkout, or wherever DATAKILN_SHARED points."""
SHARED_DATA = SHARED / "data"
HAS_SHARED = (SHARED_DATA / "mnist").is_dir() and (SHARED / "schemas" / "kuberay").is_dir()
needs_shared = pytest.mark.skipif(not HAS_SHARED, reason=f"needs the shared folder ({SHARED}: real data and "
                                                          "CRD schemas); set DATAKILN_SHARED to where it is")
MNIST_IMAGES = SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "datakiln-tests-hf"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
RAY_TEMP_DIR = os.path.join(tempfile.gettempdir(), "datakiln-tests-ray")


@pytest.fixture(scope="session", autouse=True)
def ray_session():
    """A real local Ray shared by every test (more logical CPUs than cores avoids
    actor-pool deadlocks on 2 cores)."""
    import ray

    from cluster.runtime import configure_data_context, set_embedded_environment

    set_embedded_environment()
    ray.init(num_cpus=4, object_store_memory=1024**3, include_dashboard=True, dashboard_host="127.0.0.1",
             _temp_dir=RAY_TEMP_DIR, logging_level="WARNING",
             logging_config=ray.LoggingConfig(log_level="WARNING"))
    configure_data_context()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def local_cluster():
    """A real local Ray cluster besides the session's runtime: a head that only coordinates
    (no CPUs) and two worker nodes with 2 CPUs each, started once for the tests that need one
    (they may kill and add worker nodes) and stopped by pid."""
    from tests.ray_cluster import LocalCluster

    cluster = LocalCluster(head_cpus=0)
    try:
        cluster.add_worker(cpus=2)
        cluster.add_worker(cpus=2)
        yield cluster
    finally:
        cluster.shutdown()


def pytest_configure(config):
    if os.environ.get("CI") == "true" and not HAS_SHARED:  # CI has ../shared: there, nothing may be skipped
        raise pytest.UsageError(f"CI=true but the shared folder {SHARED} is missing (set DATAKILN_SHARED)")


def pytest_terminal_summary(terminalreporter):
    """The fuzz figures, in every run's summary (CI's log included)."""
    import sys

    fuzz = sys.modules.get("tests.test_fuzz")
    if fuzz is not None and fuzz.tried:
        terminalreporter.write_line(f"fuzz: {sum(fuzz.tried.values())} bad inputs tried {fuzz.tried}")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A local S3 server (moto) on loopback, shared by the session; each module makes its own buckets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, compress: bool = True,
              image_magic: int = 0x803, label_count: int | None = None) -> tuple[Path, Path]:
    """Write an IDX images/labels pair (gzip by default)."""
    n, rows, cols = images.shape
    image_bytes = struct.pack(">IIII", image_magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    label_n = len(labels) if label_count is None else label_count
    label_bytes = struct.pack(">II", 0x801, label_n) + labels.astype(np.uint8)[:label_n].tobytes()
    suffix = ".gz" if compress else ""
    image_path, label_path = folder / f"images-idx3-ubyte{suffix}", folder / f"labels-idx1-ubyte{suffix}"
    opener = gzip.open if compress else open
    with opener(image_path, "wb") as handle:
        handle.write(image_bytes)
    with opener(label_path, "wb") as handle:
        handle.write(label_bytes)
    return image_path, label_path


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def blob_images(n: int, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two easy classes: a bright square on the left (0) or on the right (1), with noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, size, size)).astype(np.uint8)
    labels = np.arange(n) % 2
    half = size // 2
    for i, label in enumerate(labels):
        cols = slice(0, half) if label == 0 else slice(half, size)
        images[i, 2:size - 2, cols] = rng.integers(180, 255)
    return images, labels


def load_published(path, *args, tmp_path: Path, **kwargs):
    """`datasets.load_dataset` with a cache of its own, so no earlier test's cache is read."""
    import datasets

    return datasets.load_dataset(str(path), *args, cache_dir=str(tmp_path / "hf-cache"), **kwargs)


@pytest.fixture
def tiny_idx(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = blob_images(64)
    return write_idx(tmp_path, images, labels)

"""Run a spec on a Ray cluster through the Ray Jobs API.

`submit` ships datakiln's packages and the resolved spec as the job's working dir, so the
cluster runs exactly the code and spec the user has; outputs go to the spec's storage and
publish URLs (shared storage: a bucket on real clusters).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import DatakilnError
from pipeline.redact import redact
from pipeline.spec import Spec

PACKAGES = ("pipeline", "synth", "cluster")
SPEC_FILE = "datakiln-spec.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class RuntimeOptions:
    """What the job's workers need besides datakiln itself.

    Attributes:
        pip: extra requirements installed into the job's environment.
        env: environment variables for the driver and workers (credentials come from the
            cluster's own secrets, not from here: these values are visible in the job info).
        image: a container image with datakiln installed (`image_uri` runtime env).
    """

    pip: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    target = resolve_address(address)
    try:
        return JobSubmissionClient(target)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise DatakilnError(f"--address {target}: cannot reach the Ray Jobs API ({str(err).splitlines()[0]})") from None


def _stage_working_dir(spec: Spec) -> str:
    """A folder with datakiln's packages and the resolved spec (what the job runs)."""
    root = Path(__file__).resolve().parent.parent
    folder = tempfile.mkdtemp(prefix="datakiln-job-")
    for package in PACKAGES:
        shutil.copytree(root / package, Path(folder) / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(Path(folder) / SPEC_FILE, "w") as handle:
        yaml.safe_dump(spec.redacted(), handle, sort_keys=False)
    return folder


CREDENTIALS_HOW = ("set it in the cluster nodes' environment instead (e.g. AWS_ACCESS_KEY_ID / "
                   "AWS_SECRET_ACCESS_KEY, HF_TOKEN), where fsspec and the Hub client find it")


def require_cluster_paths(spec: Spec) -> None:
    """A job runs in a temporary copy of its working dir that Ray deletes when the job ends
    (and that exists on one node only): every path a submitted spec names must be absolute
    on the cluster, or a URL. The state paths are named with what to set."""
    state = {"run_root": (spec.run_root, "--set run_root=/mnt/shared/datakiln-runs (a folder every node mounts)"),
             "publish.to": (spec.publish_target(), "--set publish.to=s3://bucket/datasets/NAME or a shared folder"),
             "synthesize.storage": (spec.synthesize.storage, "--set synthesize.storage=s3://bucket/checkpoints"),
             "source.path": (spec.source.path if spec.source.format != "sklearn" else None,
                             "an absolute path or a URL, e.g. --set source.path=s3://bucket/raw/"),
             "source.labels": (spec.source.labels,
                               "an absolute path or a URL, e.g. --set source.labels=s3://bucket/raw/labels.gz")}
    for key, (value, how) in state.items():
        if value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            raise DatakilnError(f"{key}: '{value}' is relative, and a submitted run has no folder of yours to be "
                                f"relative to (it runs in a temporary working dir on the cluster); set {how}")


def submit(spec: Spec, address: str | None = None, options: RuntimeOptions | None = None) -> str:
    """Submit `spec` as a Ray job; return its submission id."""
    options = options or RuntimeOptions()
    spec.require_no_inline_secrets(CREDENTIALS_HOW)
    for name, value in options.env.items():
        if redact({name: value}, in_credentials=True)[name] != value:
            raise DatakilnError(f"--env {name}: a credential would be stored in the job's info in clear text; "
                                f"{CREDENTIALS_HOW}")
    require_cluster_paths(spec)
    runtime_env: dict = {"working_dir": _stage_working_dir(spec),
                         "env_vars": {"RAY_DATA_LOG_LEVEL": "WARNING", **options.env}}
    if options.pip:
        runtime_env["pip"] = list(options.pip)
    if options.image:
        runtime_env["image_uri"] = options.image
    client = _client(address)
    try:
        return client.submit_job(entrypoint=f"python -m pipeline.cli run {SPEC_FILE}", runtime_env=runtime_env,
                                 metadata={"datakiln_spec": spec.name, "spec_hash": spec.spec_hash()[:12]})
    finally:
        shutil.rmtree(runtime_env["working_dir"], ignore_errors=True)


def status(job_id: str, address: str | None = None) -> str:
    return str(_client(address).get_job_status(job_id).value)


def logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None = None) -> bool:
    return _client(address).stop_job(job_id)


def wait(job_id: str, address: str | None = None, timeout_s: float | None = None, poll_s: float = 2.0) -> str:
    """Block until the job ends (or `timeout_s` passes); return its last status."""
    began = time.monotonic()
    while True:
        current = status(job_id, address)
        if current in TERMINAL or (timeout_s is not None and time.monotonic() - began > timeout_s):
            return current
        time.sleep(poll_s)

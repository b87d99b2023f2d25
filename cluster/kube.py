"""Render a KubeRay RayJob (+ the ConfigMap holding its spec) for a datakiln spec.

The RayJob creates its own Ray cluster (head + autoscaled CPU workers, optionally GPU
workers), runs `datakiln run` on the spec mounted from the ConfigMap, and deletes the
cluster when the job ends. Credentials only enter through secret references.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pipeline.errors import DatakilnError
from pipeline.spec import Spec

RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "datakiln:0.1.0"
SPEC_MOUNT = "/etc/datakiln"
MAX_RAYJOB_NAME = 47  # KubeRay: RayJob names become cluster and service names with suffixes
RAY_UID = 1000  # the `ray` user of the rayproject/ray images


def resource_name(name: str, limit: int = MAX_RAYJOB_NAME) -> str:
    """A DNS-1035 label (lower-case alphanumerics and '-', starting with a letter) within `limit`."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"dk-{label}"
    return label[:limit].rstrip("-")


def _container(name: str, image: str, cpu: str, memory: str, secret: str | None, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "env": [{"name": "RAY_DATA_LOG_LEVEL", "value": "WARNING"},
                {"name": "HF_HOME", "value": "/tmp/hf"}],
        "volumeMounts": [{"name": "datakiln-spec", "mountPath": SPEC_MOUNT, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return container


def _pod(container: dict[str, Any], config_map: str, gpu: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": RAY_UID, "fsGroup": RAY_UID},
        "containers": [container],
        "volumes": [{"name": "datakiln-spec", "configMap": {"name": config_map}}],
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def render(spec: Spec, image: str = DEFAULT_IMAGE, gpus: int = 0, workers: tuple[int, int] = (1, 4),
           secret: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    """The ConfigMap and RayJob for `spec`.

    Args:
        image: a datakiln image (see k8s/Dockerfile).
        gpus: maximum GPU workers (one GPU each); > 0 also sets `synthesize.use_gpu` and
            `synthesize.workers` in the mounted spec so training uses them.
        workers: (min, max) CPU workers for the autoscaler.
        secret: name of a Secret whose keys become environment variables (storage credentials).
    """
    low, high = workers
    if low < 0 or high < max(low, 1):
        raise DatakilnError(f"--workers {low}:{high}: expected 0 <= MIN <= MAX and MAX >= 1")
    if gpus:
        spec = spec.model_copy(deep=True)
        spec.synthesize.use_gpu, spec.synthesize.workers = True, gpus
    name = resource_name(spec.name)
    config_map = resource_name(f"{name}-spec", 63)
    metadata = {"name": name, "labels": {"app.kubernetes.io/name": "datakiln", "datakiln/spec": name}}
    if namespace:
        metadata["namespace"] = namespace
    config = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {**metadata, "name": config_map},
        "data": {"spec.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)},
    }
    groups = [{
        "groupName": "cpu", "replicas": low, "minReplicas": low, "maxReplicas": high, "rayStartParams": {},
        "template": _pod(_container("ray-worker", image, "4", "16Gi", secret), config_map),
    }]
    if gpus:
        groups.append({
            "groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": gpus, "rayStartParams": {},
            "template": _pod(_container("ray-worker", image, "8", "48Gi", secret, gpus=1), config_map, gpu=True),
        })
    head_params = {"dashboard-host": "0.0.0.0", "num-cpus": "0"}  # the head schedules no work
    job = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata,
        "spec": {
            "entrypoint": f"datakiln run {SPEC_MOUNT}/spec.yaml",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 24 * 3600,
            "backoffLimit": 1,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {"rayStartParams": head_params,
                                  "template": _pod(_container("ray-head", image, "2", "8Gi", secret), config_map)},
                "workerGroupSpecs": groups,
            },
        },
    }
    return [config, job]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the mounted spec) as readable `|` blocks."""


_BlockDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False)


def parse_workers(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match:
        raise DatakilnError(f"--workers {text!r}: expected MIN:MAX, e.g. 1:4")
    return int(match.group(1)), int(match.group(2))

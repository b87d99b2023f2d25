"""Render a KubeRay RayJob (+ the ConfigMap holding its spec, + a NetworkPolicy) for a spec.

The RayJob creates its own Ray cluster (head + autoscaled CPU workers, optionally GPU
workers), runs `datakiln run` on the spec mounted from the ConfigMap, and deletes the
cluster when the job ends. Credentials only enter through secret references; every pod
meets the "restricted" Pod Security Standard with a read-only root filesystem; Ray's token
auth is on and the NetworkPolicy admits the Jobs API only from the cluster's own pods,
labelled submitters and the KubeRay operator.
"""

from __future__ import annotations

import copy
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
DASHBOARD_PORT, CLIENT_PORT = 8265, 10001
CLUSTER_LABEL = "datakiln/ray-cluster"
SUBMITTER_LABEL = "datakiln/submitter"
"""Pods with this label set to "true" may reach the Jobs API (`datakiln submit` from inside the cluster)."""
OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_UID, "fsGroup": RAY_UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
                      "readOnlyRootFilesystem": True, "runAsNonRoot": True}
"""The Kubernetes "restricted" Pod Security Standard, plus a read-only root filesystem."""
WRITABLE_ENV = [{"name": "HF_HOME", "value": "/tmp/hf"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
                {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"}]
"""With a read-only root, caches go to the `/tmp` emptyDir (Ray's temp dir is under it too)."""


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
        "env": [{"name": "RAY_DATA_LOG_LEVEL", "value": "WARNING"}, *copy.deepcopy(WRITABLE_ENV)],
        "volumeMounts": [{"name": "datakiln-spec", "mountPath": SPEC_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return container


def _pod(container: dict[str, Any], config_map: str, cluster_label: str, gpu: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [container],
        "volumes": [{"name": "datakiln-spec", "configMap": {"name": config_map}}, {"name": "tmp", "emptyDir": {}}],
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {CLUSTER_LABEL: cluster_label}}, "spec": spec}


def network_policy(name: str, cluster_label: str, namespace: str | None = None) -> dict[str, Any]:
    """Ingress to the Ray pods: anything from the cluster's own pods; the dashboard (Jobs API)
    and client ports only from pods labelled as submitters and from the KubeRay operator."""
    ports = [{"protocol": "TCP", "port": port} for port in (DASHBOARD_PORT, CLIENT_PORT)]
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "datakiln"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": {CLUSTER_LABEL: cluster_label}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {CLUSTER_LABEL: cluster_label}}}]},
                {"from": [{"podSelector": {"matchLabels": {SUBMITTER_LABEL: "true"}}},
                          {"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_LABELS}}],
                 "ports": ports},
            ],
        },
    }


def render(spec: Spec, image: str = DEFAULT_IMAGE, gpus: int = 0, workers: tuple[int, int] = (1, 4),
           secret: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    """The ConfigMap, RayJob and NetworkPolicy for `spec`.

    Args:
        image: a datakiln image (see k8s/Dockerfile).
        gpus: maximum GPU workers (one GPU each); > 0 also sets `synthesize.use_gpu` and
            `synthesize.workers` in the mounted spec so training uses them.
        workers: (min, max) CPU workers for the autoscaler.
        secret: name of a Secret whose keys become environment variables (storage credentials).
    """
    spec.require_no_inline_secrets("put it in a Kubernetes Secret and pass --secret NAME (its keys become "
                                    "environment variables of every pod, e.g. AWS_SECRET_ACCESS_KEY)")
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
        "data": {"spec.yaml": yaml.safe_dump(spec.redacted(), sort_keys=False)},
    }
    groups = [{
        "groupName": "cpu", "replicas": low, "minReplicas": low, "maxReplicas": high, "rayStartParams": {},
        "template": _pod(_container("ray-worker", image, "4", "16Gi", secret), config_map, name),
    }]
    if gpus:
        groups.append({
            "groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": gpus, "rayStartParams": {},
            "template": _pod(_container("ray-worker", image, "8", "48Gi", secret, gpus=1), config_map, name,
                             gpu=True),
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
            "submissionMode": "HTTPMode",  # the operator submits: no extra submitter pod to secure
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"securityContext": copy.deepcopy(CONTAINER_SECURITY)},  # the head pod's sidecar
                "authOptions": {"mode": "token"},  # KubeRay generates the token into a Secret
                "headGroupSpec": {"rayStartParams": head_params,
                                  "template": _pod(_container("ray-head", image, "2", "8Gi", secret), config_map,
                                                   name)},
                "workerGroupSpecs": groups,
            },
        },
    }
    return [config, job, network_policy(name, name, namespace)]


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

"""The Kubernetes "restricted" Pod Security Standard (v1.32), checked offline on pod specs,
plus datakiln's own rule: a read-only root filesystem with `/tmp` on an emptyDir."""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                   "secret"}
ALLOWED_CAPABILITIES = {"NET_BIND_SERVICE"}


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in a KubeRay resource."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    found = [("headGroupSpec", cluster["headGroupSpec"]["template"]["spec"])]
    found += [(f"workerGroupSpecs.{g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if spec.get("submitterPodTemplate"):
        found.append(("submitterPodTemplate", spec["submitterPodTemplate"]["spec"]))
    return found


def violations(pod: dict[str, Any], autoscaler: dict[str, Any] | None = None) -> list[str]:
    """What in `pod` (and the autoscaler sidecar's security context) breaks the profile."""
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    pod_context = pod.get("securityContext", {})
    containers = [(c["name"], c.get("securityContext", {}), c) for c in pod.get("containers", []) + pod.get("initContainers", [])]
    if autoscaler is not None:
        containers.append(("autoscaler", autoscaler, {}))
    for name, context, container in containers:
        merged = {**pod_context, **context}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - ALLOWED_CAPABILITIES:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if merged.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if merged.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if container:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            if "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
                problems.append(f"{name}: /tmp must be an emptyDir (the root filesystem is read-only)")
    return problems


def check_restricted(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    autoscaler = cluster.get("autoscalerOptions", {}).get("securityContext", {}) if cluster.get(
        "enableInTreeAutoscaling") else None
    return [f"{doc['kind']} {where}: {p}" for where, pod in pod_templates(doc)
            for p in violations(pod, autoscaler if where == "headGroupSpec" else None)]

"""Every manifest in k8s/ and every `k8s render` output validates offline (KubeRay v1.7.0
CRDs with defaults and strict fields, operator rules, core kinds with kubernetes-validate)."""

import shutil
import subprocess
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from cluster import kube
from pipeline.errors import DatakilnError
from pipeline.spec import build_spec, load_spec
from tests.conftest import ROOT, needs_shared
from tests.kuberay import validate
from tests.pod_security import check_restricted, violations

K8S = ROOT / "k8s"
KUBE_VERSION = "1.32.0"


def assemble(folder: Path) -> list[dict]:
    """The subset of kustomize these manifests use: resources, configMapGenerator, JSON patches."""
    config = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in config.get("resources", []):
        path = folder / resource
        docs += assemble(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for generator in config.get("configMapGenerator", []):
        data = {Path(f).name: (folder / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for label in config.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in config.get("patches", []):
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text())
        target = patch["target"]
        for i, doc in enumerate(docs):
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                docs[i] = jsonpatch.apply_patch(doc, ops)
    return docs


def build(folder: Path) -> list[dict]:
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return assemble(folder)


def check(docs: list[dict]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            assert validate(doc) == [], doc["kind"]
            assert check_restricted(doc) == []
            cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
            assert cluster["authOptions"] == {"mode": "token"}
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] == "ConfigMap":
            build_spec(yaml.safe_load(doc["data"]["spec.yaml"]))  # the mounted spec is a valid datakiln spec


@needs_shared
@pytest.mark.parametrize("folder", ["base", "overlays/cpu", "overlays/gpu"])
def test_kustomize_builds_validate(folder):
    docs = build(K8S / folder)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "NetworkPolicy", "RayCluster", "RayJob"]
    check(docs)
    _check_policy_selects_every_pod(docs)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="compares against kubectl kustomize")
@pytest.mark.parametrize("folder", ["base", "overlays/gpu"])
def test_python_assembly_matches_kustomize(folder):
    by_kind = lambda docs: {d["kind"]: d for d in docs}  # noqa: E731
    assert by_kind(assemble(K8S / folder)) == by_kind(build(K8S / folder))


def test_overlays_shape_the_worker_groups():
    cpu = {d["kind"]: d for d in build(K8S / "overlays/cpu")}
    assert cpu["RayCluster"]["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 8
    gpu = {d["kind"]: d for d in build(K8S / "overlays/gpu")}
    for groups in (gpu["RayCluster"]["spec"]["workerGroupSpecs"], gpu["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]):
        assert [g["groupName"] for g in groups] == ["cpu", "gpu"]
        limits = groups[1]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1" and groups[1]["minReplicas"] == 0
    assert "synthesize.use_gpu=true" in gpu["RayJob"]["spec"]["entrypoint"]


@needs_shared
@pytest.mark.parametrize("gpus, workers", [(0, (1, 4)), (2, (0, 8))])
def test_render_validates(gpus, workers):
    spec = load_spec(str(ROOT / "examples" / "mnist.yaml"))
    docs = kube.render(spec, image="registry.example/datakiln:1", gpus=gpus, workers=workers, secret="s3-creds")
    check(docs)
    _check_policy_selects_every_pod(docs)
    config, job, _ = docs
    mounted = build_spec(yaml.safe_load(config["data"]["spec.yaml"]))
    assert mounted.synthesize.use_gpu is bool(gpus) and (not gpus or mounted.synthesize.workers == gpus)
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (groups[0]["minReplicas"], groups[0]["maxReplicas"]) == workers and len(groups) == 1 + bool(gpus)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["securityContext"]["runAsNonRoot"] is True
    assert head["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert list(yaml.safe_load_all(kube.render_yaml(docs))) == docs  # prints as YAML that reads back the same


@needs_shared
def test_render_names_fit_kuberay_limits():
    spec = build_spec({"name": "My_Very.Long-Dataset-Name-That-Goes-On-And-On-Forever-2026",
                       "source": {"format": "sklearn"}})
    _, job, _ = kube.render(spec)
    assert len(job["metadata"]["name"]) <= 47 and validate(job) == []
    assert kube.resource_name("2026-data") == "dk-2026-data"


@needs_shared
@pytest.mark.parametrize("path, value, message", [
    (["spec", "rayClusterSpec", "headGroupSpec", "replicaz"], 1, "Additional properties are not allowed ('replicaz'"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplicas"], "four", "'four' is not of type 'integer'"),
    (["spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"], 0, "0 is not of type 'string'"),
    (["spec", "shutdownAfterJobFinishes"], False, "ttlSecondsAfterFinished needs spec.shutdownAfterJobFinishes"),
    (["metadata", "name"], "x" * 48, "longer than 47 characters"),
])
def test_broken_manifests_fail(path, value, message):
    job = next(d for d in build(K8S / "base") if d["kind"] == "RayJob")
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(message in error for error in validate(job)), validate(job)


def _check_policy_selects_every_pod(docs: list[dict]) -> None:
    """The NetworkPolicy selects every Ray pod, admits the cluster's own pods on any port and
    others only on the dashboard and client ports."""
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    selector = policy["podSelector"]
    for doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                labels = group["template"]["metadata"]["labels"]
                assert all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
                assert all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))
    own, outside = policy["ingress"]
    assert "ports" not in own and sorted(p["port"] for p in outside["ports"]) == [8265, 10001]


@pytest.mark.parametrize("change, problem", [
    (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccompProfile must be RuntimeDefault"),
    (lambda pod: pod["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capabilities"),
    (lambda pod: pod.update(hostNetwork=True), "hostNetwork is true"),
    (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "type ['hostPath'] not allowed"),
    (lambda pod: pod["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
    (lambda pod: [c["securityContext"].pop("runAsNonRoot") for c in pod["containers"]]
     and pod["securityContext"].pop("runAsNonRoot"), "runAsNonRoot must be true"),
])
def test_the_restricted_profile_check_catches_each_violation(change, problem):
    job = kube.render(load_spec(str(ROOT / "examples" / "mnist.yaml")))[1]
    pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert violations(pod) == []
    change(pod)
    assert any(problem in p for p in violations(pod)), violations(pod)


def test_render_refuses_inline_credentials_and_never_prints_them():
    spec = load_spec(str(ROOT / "examples" / "mnist.yaml"),
                     ["publish.to=s3://bucket/digits", "publish.storage_options.secret=planted-k8s-secret"])
    with pytest.raises(DatakilnError, match=r"publish.storage_options.secret: holds a credential.*--secret NAME"):
        kube.render(spec)


def test_broken_core_kind_fails():
    config = next(d for d in build(K8S / "base") if d["kind"] == "ConfigMap")
    config["spec"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(config, KUBE_VERSION, strict=True)

"""Offline validation of KubeRay manifests against the v1.7.0 CRD schemas in ../shared.

A plain JSON-schema check is stricter here than the published schema alone, to behave like
`kubectl apply --validate=strict` on a real API server: schema defaults are applied first,
unknown fields are rejected, and the operator's own rules are checked.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import jsonschema
import yaml

from tests.conftest import SHARED

SCHEMAS = SHARED / "schemas" / "kuberay"
_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
_NAME_LIMITS = {"RayJob": 47, "RayService": 47, "RayCluster": 53}
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _strict(schema: Any) -> Any:
    """Reject unknown fields wherever the schema lists properties (as --validate=strict does)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / _FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server does before validating: fill `default`s, drop nulls."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = {k: v for k, v in value.items() if v is not None}
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return {k: apply_defaults(props.get(k, {}), v) for k, v in out.items()}
    if isinstance(value, list):
        return [apply_defaults(schema.get("items", {}), v) for v in value]
    return value


def _operator_errors(doc: dict[str, Any]) -> list[str]:
    kind, name = doc["kind"], doc.get("metadata", {}).get("name", "")
    errors = []
    if not _DNS_1035.match(name):
        errors.append(f"metadata.name {name!r} is not a DNS-1035 label")
    if len(name) > _NAME_LIMITS[kind]:
        errors.append(f"metadata.name {name!r} longer than {_NAME_LIMITS[kind]} characters")
    spec = doc.get("spec", {})
    if kind == "RayJob":
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            errors.append("spec.ttlSecondsAfterFinished needs spec.shutdownAfterJobFinishes")
        cluster = spec.get("rayClusterSpec")
        if not cluster and not spec.get("clusterSelector"):
            errors.append("spec needs rayClusterSpec or clusterSelector")
    else:
        cluster = spec
    for group in (cluster or {}).get("workerGroupSpecs", []):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            errors.append(f"workerGroupSpecs {group.get('groupName')}: minReplicas > maxReplicas")
    return errors


def validate(doc: dict[str, Any]) -> list[str]:
    """Errors for one KubeRay custom resource (empty when valid)."""
    schema = crd_schema(doc["kind"])
    candidate = apply_defaults(schema, doc)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(candidate)]
    return errors + _operator_errors(candidate)

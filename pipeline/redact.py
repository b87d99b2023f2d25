"""The one redaction function for everything that leaves the process.

Lineage, the dataset card, metrics, console lines, error messages, the job working dir
and rendered manifests all pass through `redact` (structures) or `redact_text` (strings).
It masks, with `***`:

- values under credential-like key names (`secret`, `token`, `password`, `api_key`, an
  `Authorization` header, …; inside storage options and headers also a bare `key`);
- URL user-info (`https://user:pw@host/…` → `https://***@host/…`) and credential-like
  query parameters (`?sig=…`, `X-Amz-Signature=…`);
- `Authorization: Bearer …` / `Basic …` values and connection-string fields
  (`AccountKey=…;`, `SharedAccessSignature=…`, `Password=…`);
- every value of a known credential environment variable (`AWS_SECRET_ACCESS_KEY`,
  `HF_TOKEN`, …, and any variable whose name looks like a credential) wherever it appears.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"

_SECRET_WORDS = {"secret", "token", "password", "passwd", "credential", "credentials", "authorization",
                 "auth", "cookie", "signature", "sig", "sas", "apikey", "passphrase"}
"""A key whose last word is one of these holds a credential."""
_SECRET_NAMES = {"api_key", "access_key", "account_key", "private_key", "secret_key", "connection_string",
                 "connectionstring", "session_token", "client_secret", "x_api_key", "x_amz_security_token",
                 "sharedaccesssignature", "accountkey"}
_CREDENTIAL_CONTEXTS = ("storage_options", "headers", "client_kwargs", "config_kwargs", "env", "env_vars")
"""Mappings whose bare `key` is a credential too (s3fs: `key`/`secret`)."""
KNOWN_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET", "GOOGLE_API_KEY", "GITHUB_TOKEN", "GH_TOKEN", "RAY_AUTH_TOKEN", "WANDB_API_KEY",
)
_MIN_SECRET_LENGTH = 6
"""Shorter environment values (`1`, `true`, `us-east`) are not searched for in text."""

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s\"'<>]+@")
_QUERY = re.compile(r"(?i)([?&;][\w.\-]*(?:sig|signature|token|secret|password|credential|key)[\w.\-]*=)[^&;\s#\"']+")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{6,}")
_FIELD = re.compile(r"(?i)\b(accountkey|sharedaccesssignature|sharedaccesskey|password|pwd|secret|"
                    r"aws_secret_access_key|aws_session_token)\s*([=:])\s*([^;\s,\"'}]+)")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(name: Any, in_credentials: bool = False) -> bool:
    """Whether a mapping key names a credential."""
    words = _words(str(name))
    if not words:
        return False
    if "_".join(words) in _SECRET_NAMES or words[-1] in _SECRET_WORDS:
        return True
    return in_credentials and words[-1] == "key"


def _credential_values() -> list[str]:
    values = []
    for name, value in os.environ.items():
        if (name in KNOWN_CREDENTIAL_VARIABLES or is_secret_key(name)) and len(value) >= _MIN_SECRET_LENGTH:
            values.append(value)
    return sorted(set(values), key=len, reverse=True)  # longest first: a value containing another


def redact_text(text: str) -> str:
    """`text` with URL user-info, credential fields and known credential values masked."""
    if not text:
        return text
    for value in _credential_values():
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def redact(value: Any, in_credentials: bool = False) -> Any:
    """A copy of `value` (mappings, lists, strings, numbers) safe to write out."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if is_secret_key(key, in_credentials) and item not in (None, "", {}, []) and not isinstance(item, dict):
                out[key] = MASK
            else:
                context = in_credentials or str(key).lower().endswith(_CREDENTIAL_CONTEXTS)
                out[key] = redact(item, context)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, in_credentials) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def secret_paths(value: Any, where: str = "", in_credentials: bool = False) -> list[str]:
    """Key paths of the values that `redact` would change: the inline credentials."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            context = in_credentials or str(key).lower().endswith(_CREDENTIAL_CONTEXTS)
            if isinstance(item, (dict, list)):
                found += secret_paths(item, path, context)
            elif redact({key: item}, in_credentials)[key] != item:
                found.append(path)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in secret_paths(item, f"{where}.{i}", in_credentials)]
    if isinstance(value, str) and redact_text(value) != value:
        return [where]
    return []

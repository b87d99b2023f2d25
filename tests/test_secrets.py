"""Planted credentials — in storage options, URL user-info and a header — appear in no
artifact: lineage.json, README.md, metrics.json, the console of `run`, the job working dir
that `submit` would upload, or `k8s render` output."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml

from cluster import jobs, kube
from pipeline.cli import main
from pipeline.errors import DatakilnError
from pipeline.redact import redact, redact_text
from pipeline.spec import build_spec

pytestmark = pytest.mark.integration

IN_URL, IN_HEADER, IN_OPTIONS, IN_ENV = "planted-userinfo-pw", "planted-header-token", "planted-s3-secret", "planted-env-v4lue"


@pytest.fixture
def http_csv(tmp_path):
    """A CSV served over HTTP on loopback (the server ignores the credentials sent to it)."""
    rows = ["age,income,label"] + [f"{20 + i},{1000 + 7 * i},{'ab'[i % 2]}" for i in range(60)]
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "people.csv").write_text("\n".join(rows) + "\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://reader:{IN_URL}@127.0.0.1:{server.server_address[1]}/people.csv"
    server.shutdown()


@pytest.fixture
def bucket(moto_endpoint):
    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": IN_OPTIONS}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("secret-tests")
    return fs, options


def _assert_clean(text: str, where: str) -> None:
    for secret in (IN_URL, IN_HEADER, IN_OPTIONS, IN_ENV):
        assert secret not in text, f"{secret} leaked into {where}"


def test_planted_secrets_reach_no_artifact(http_csv, bucket, tmp_path, capfd, monkeypatch):
    fs, options = bucket
    monkeypatch.setenv("DATAKILN_TEST_API_TOKEN", IN_ENV)  # a credential-like variable's value
    spec = {"name": "secrets", "run_root": str(tmp_path / "runs"),
            "source": {"format": "csv", "path": http_csv,
                       "storage_options": {"headers": {"X-Api-Key": IN_HEADER}}},
            "synthesize": {"enabled": False},
            "publish": {"to": "s3://secret-tests/people", "storage_options": options}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--set", f"name=secrets-{'x' * 3}"]) == 0
    console = capfd.readouterr()
    _assert_clean(console.out + console.err, "the console")
    for name in ("lineage.json", "README.md", "metrics.json", ".datakiln.json"):
        _assert_clean(fs.cat(f"secret-tests/people/{name}").decode(), name)
    lineage = json.loads(fs.cat("secret-tests/people/lineage.json"))
    assert lineage["spec"]["source"]["path"].startswith("http://***@127.0.0.1:")
    assert lineage["spec"]["source"]["storage_options"]["headers"]["X-Api-Key"] == "***"
    assert lineage["rows"]["rows_out"] == 60
    local = list((tmp_path / "runs").rglob("lineage.json"))
    assert local and all(IN_URL not in p.read_text() and IN_OPTIONS not in p.read_text() for p in local)

    # an error line that names the source URL is masked too
    assert main(["run", str(path), "--set", "annotate.label_column=missing"]) == 2
    console = capfd.readouterr()
    _assert_clean(console.out + console.err, "an error line")
    assert "no column 'missing'" in console.err


def test_submit_and_render_refuse_inline_secrets_and_ship_none(tmp_path, monkeypatch):
    inline = build_spec({"name": "s", "source": {"format": "csv", "path": f"https://u:{IN_URL}@host/x.csv"},
                         "publish": {"to": "s3://b/x", "storage_options": {"secret": IN_OPTIONS}}})
    with pytest.raises(DatakilnError, match=r"^source.path: holds a credential.*nodes' environment"):
        jobs.submit(inline, "http://127.0.0.1:1")
    with pytest.raises(DatakilnError, match=r"^source.path: holds a credential.*--secret NAME"):
        kube.render(inline)
    with pytest.raises(DatakilnError, match=r"^--env AWS_SECRET_ACCESS_KEY: a credential"):
        jobs.submit(build_spec({"name": "s", "source": {"format": "sklearn"}}), "http://127.0.0.1:1",
                    jobs.RuntimeOptions(env={"AWS_SECRET_ACCESS_KEY": IN_ENV}))

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", IN_ENV)  # credentials by reference: the environment
    by_reference = build_spec({"name": "s", "source": {"format": "csv", "path": "s3://b/x.csv"},
                               "publish": {"to": "s3://b/out"}})
    folder = Path(jobs._stage_working_dir(by_reference))
    try:
        shipped = "".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file())
        _assert_clean(shipped, "the job working dir")
        assert yaml.safe_load((folder / jobs.SPEC_FILE).read_text())["publish"]["to"] == "s3://b/out"
    finally:
        import shutil

        shutil.rmtree(folder)
    _assert_clean(kube.render_yaml(kube.render(by_reference, secret="s3-creds")), "k8s render")


@pytest.mark.parametrize("text, expected", [
    ("s3://key:sec@bucket/x", "s3://***@bucket/x"),
    ("https://h/x?X-Amz-Signature=abc123&a=1", "https://h/x?X-Amz-Signature=***&a=1"),
    ("Authorization: Bearer abcdef123456", "Authorization: Bearer ***"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9v==;EndpointSuffix=x",
     "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=***;EndpointSuffix=x"),
    ("file:///data/images sklearn://digits#3 tstr_ratio 0.91", "file:///data/images sklearn://digits#3 tstr_ratio 0.91"),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_masks_credential_keys_but_not_ordinary_ones():
    raw = {"stage": {"key": "abc"}, "storage_options": {"key": "id", "token": "t", "endpoint_url": "http://x"},
           "client_secret": "s", "api_key": "k", "label_column": "label", "headers": {"X-Api-Key": "k", "Accept": "*/*"}}
    assert redact(raw) == {"stage": {"key": "abc"}, "storage_options": {"key": "***", "token": "***",
                                                                        "endpoint_url": "http://x"},
                           "client_secret": "***", "api_key": "***", "label_column": "label",
                           "headers": {"X-Api-Key": "***", "Accept": "*/*"}}

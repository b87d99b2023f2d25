"""Bad input: one line naming the file or key, exit status 2, no traceback."""

import subprocess
import sys
import time

import pytest

from pipeline.cli import main
from tests.conftest import ROOT, blob_images, write_idx


def _idx_spec(tmp_path, image_path, label_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nsource: {{format: idx, path: '{image_path}', labels: '{label_path}'}}\n"
                    f"publish: {{to: '{tmp_path / 'out'}'}}\nrun_root: '{tmp_path / 'runs'}'\n")
    return spec


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("datakiln: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_file_from_a_fresh_process(tmp_path):
    spec = _idx_spec(tmp_path, tmp_path / "nope-images.gz", tmp_path / "nope-labels.gz")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(spec)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("datakiln:")]
    assert lines == [f"datakiln: error: {tmp_path / 'nope-images.gz'}: IDX images file: no such file or directory"]
    assert "Traceback" not in proc.stderr


def test_wrong_magic_and_count_mismatch(tmp_path, capsys):
    images, labels = blob_images(8)
    spec = _idx_spec(tmp_path, *write_idx(tmp_path, images, labels, image_magic=0x802))
    assert "wrong IDX magic number 0x00000802" in _one_line_error(capsys, ["run", str(spec)])
    spec = _idx_spec(tmp_path, *write_idx(tmp_path, images, labels, label_count=5))
    assert "label count 5 differs from image count 8" in _one_line_error(capsys, ["run", str(spec)])


@pytest.mark.parametrize("argv, message", [
    (["validate", "SPEC", "--set", "synthesize.epoch=3"], "synthesize.epoch: unknown key"),
    (["run", "SPEC", "--set", "synthesize.epochs=many"], "synthesize.epochs: Input should be a valid integer"),
    (["validate", "MISSING"], "MISSING: spec file not found"),
    (["run", "SPEC", "--set", "evaluate.inception_weights=/no/such.pth"],
     "evaluate.inception_weights: /no/such.pth is not a local file (weights are never downloaded)"),
    (["run", "SPEC", "--set", "synthesize.use_gpu=true"],
     "synthesize.use_gpu: 1 GPU worker(s) need 1 GPU(s), the Ray runtime has 0; set synthesize.use_gpu: false"),
    (["run", "SPEC", "--set", "synthesize.workers=64"],
     "synthesize.workers: 64 training workers need 64 CPUs, the Ray runtime has 4; lower synthesize.workers"),
    (["run", "SPEC", "--set", "publish.to=FILE/ds"], "publish.to FILE/ds: cannot publish there: FILE is a file, not a folder"),
    (["run", "SPEC", "--set", "run_root=FILE/runs"], "run_root: cannot create the run's folder FILE/runs/t/"),
])
def test_spec_errors(tmp_path, capsys, argv, message):
    images, labels = blob_images(8)
    spec = _idx_spec(tmp_path, *write_idx(tmp_path, images, labels))
    (tmp_path / "a-file").write_text("not a folder")
    names = {"SPEC": str(spec), "MISSING": str(tmp_path / "missing.yaml"), "FILE": str(tmp_path / "a-file")}
    argv = [names.get(a, a.replace("FILE", names["FILE"])) for a in argv]
    began = time.perf_counter()
    err = _one_line_error(capsys, argv)
    assert message.replace("MISSING", names["MISSING"]).replace("FILE", names["FILE"]) in err
    assert time.perf_counter() - began < 10  # before any work: no wait for resources that never come


def test_validate_prints_the_spec_hash(tmp_path, capsys):
    assert main(["validate", str(ROOT / "examples" / "mnist.yaml")]) == 0
    assert "valid (spec hash " in capsys.readouterr().out

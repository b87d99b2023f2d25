import pytest

from pipeline.errors import SpecError
from pipeline.spec import apply_override, build_spec, load_spec
from tests.conftest import ROOT

BASE = {"name": "t", "source": {"format": "sklearn", "path": "digits"}}


def test_example_specs_validate():
    for name in ("demo.yaml", "mnist.yaml"):
        spec = load_spec(str(ROOT / "examples" / name))
        assert spec.synthesize.model == "cvae"


def test_overrides_are_typed_and_nested():
    spec = build_spec(dict(BASE), overrides=["synthesize.epochs=3", "synthesize.use_gpu=true", "seed=7",
                                              "annotate.class_names=[a, b]", "preprocess.ops.2.size=16"])
    assert spec.synthesize.epochs == 3 and spec.synthesize.use_gpu is True and spec.seed == 7
    assert spec.annotate.class_names == ["a", "b"]
    assert spec.preprocess.ops[2] == {"op": "resize", "size": 16, "fit": "crop"}


def test_defaults_fill_operator_params():
    spec = build_spec(dict(BASE))
    assert [op["op"] for op in spec.preprocess.ops] == ["decode", "color", "resize", "dedup"]
    assert spec.preprocess.ops[1]["mode"] == "auto"


@pytest.mark.parametrize("overrides, message", [
    (["source.pathh=x"], "source.pathh: unknown key"),
    (["synthesize.epochs=abc"], "synthesize.epochs: Input should be a valid integer"),
    (["synthesize.epochs=0"], "synthesize.epochs: Input should be greater than or equal to 1"),
    (["synthesize.model=gann"], "synthesize.model: unknown model 'gann'; known: cvae"),
    (["preprocess.ops.3.op=dedupe"], "preprocess.ops.3: unknown operator 'dedupe'; known: color, decode, dedup, near_dedup, resize"),
    (["preprocess.ops.2.size=30"], "preprocess.ops.2.size: must be a multiple of 4"),
    (["preprocess.ops.1.colour=L"], "preprocess.ops.1.colour: unknown key"),
    (["source.format=idx"], "source.labels is required for format 'idx'"),
    (["split.test_fraction=1.5"], "split.test_fraction: Input should be less than 1"),
    (["synthesize.options.widht=8"], "synthesize.options.widht: not a setting of the 'cvae' model "
                                     "(its settings: latent_dim, width, hidden, learning_rate)"),
    (["synthesize.model=cflow", "synthesize.latent_dim=8"], "synthesize.latent_dim: the 'cflow' model has no latent_dim"),
    (["synthesize.guidance=2"], "synthesize.guidance: the 'cvae' model has no guidance"),
    (["evaluate.augment=false", "evaluate.gates={augment_gain: '>= 0'}"],
     "evaluate.gates.augment_gain: augment_gain is not computed when evaluate.augment is false"),
    (["synthesize.lr_schedule=cosine"], "synthesize.lr_schedule: Input should be 'constant' or 'linear'"),
    (["annotate.unlabelled=true", "annotate.label_quality.action=keep"],
     "annotate.label_quality: an unlabelled dataset has no labels to check"),
])
def test_errors_name_the_key_path(overrides, message):
    with pytest.raises(SpecError) as err:
        build_spec(dict(BASE), origin="x.yaml", overrides=overrides)
    text = str(err.value)
    assert text.startswith("x.yaml: ") and message in text and "\n" not in text


@pytest.mark.parametrize("assignment, message", [
    ("novalue", "expected KEY.PATH=VALUE"),
    ("preprocess.ops.9.size=8", "'9' is not an index of a list of 4"),
    ("seed.x=1", "'seed' is not a mapping"),
])
def test_bad_overrides(assignment, message):
    raw = {**BASE, "seed": 1, "preprocess": {"ops": [{"op": "decode"}, {"op": "color"}, {"op": "resize"}, {"op": "dedup"}]}}
    with pytest.raises(SpecError, match=message):
        apply_override(raw, assignment)


def test_spec_hash_is_stable_and_sensitive():
    a, b = build_spec(dict(BASE)), build_spec(dict(BASE))
    assert a.spec_hash() == b.spec_hash()
    assert build_spec(dict(BASE), overrides=["seed=1"]).spec_hash() != a.spec_hash()


def test_missing_and_invalid_spec_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+ invalid YAML"):
        load_spec(str(bad))


def test_relative_paths_in_a_spec_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    spec = folder / "spec.yaml"
    spec.write_text("name: t\nrun_root: runs\nsource: {format: idx, path: data/i.gz, labels: ../l.gz}\n"
                    "publish: {to: out}\nsynthesize: {storage: /abs/ckpt}\n")
    monkeypatch.chdir(tmp_path / "project" / "data")
    loaded = load_spec(str(spec), ["source.labels=mine/l.gz"])
    assert loaded.source.path == str(folder / "data" / "i.gz") and loaded.run_root == str(folder / "runs")
    assert loaded.publish.to == str(folder / "out") and loaded.synthesize.storage == "/abs/ckpt"
    assert loaded.source.labels == "mine/l.gz"  # --set values stay relative to the current directory
    assert load_spec(str(spec)).source.labels == str(tmp_path / "l.gz")
    digits = folder / "digits.yaml"
    digits.write_text("name: d\nsource: {format: sklearn, path: digits}\n")
    assert load_spec(str(digits)).source.path == "digits"  # a bundled dataset's name, not a path


def test_a_set_into_an_unset_section_creates_it_with_its_defaults():
    spec = build_spec({"name": "t", "source": {"format": "sklearn"}}, overrides=["annotate.label_quality.action=drop"])
    assert spec.annotate.label_quality.action == "drop" and spec.annotate.label_quality.folds == 4

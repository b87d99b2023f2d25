"""The typed run spec: YAML → pydantic model, `--set a.b=c` overrides, key-path errors.

The CLI and the Python API both build a `Spec` through `load_spec`, so they cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import SpecError
from pipeline.redact import redact, secret_paths


DEFAULT_IMAGE_OPS = ("decode", "color", "resize", "dedup")
DEFAULT_TEXT_OPS = ("normalize", "length", "dedup", "near_dedup")
TABLE_FORMATS = ("parquet", "csv", "jsonl")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSpec(_Section):
    format: Literal["idx", "images", "parquet", "csv", "jsonl", "sklearn", "text"]
    kind: Literal["image", "table", "text"] | None = None
    """What the rows are: `image` (default for idx/images/sklearn), `table` (default for
    parquet/csv/jsonl; set `image` for tables of encoded images, `text` for a table with a
    text column) or `text` (default for `text` files)."""
    columns: dict[str, Literal["numeric", "categorical", "boolean", "datetime", "id", "ignore"]] = Field(
        default_factory=dict)
    """`table`: column kinds that override inference (`ignore` drops a column)."""
    path: str | None = None
    """fsspec URL of a file, a folder or a glob (`sklearn`: the bundled dataset name, e.g. `digits`)."""
    labels: str | None = None
    """`idx` only: fsspec URL of the labels file that goes with `path`."""
    image_column: str = "image"
    """`parquet`/`csv`/`jsonl`: column holding encoded image bytes or a HF `{bytes, path}` struct."""
    text_column: str = "text"
    """`kind: text` in a `parquet`/`csv`/`jsonl` table: the column holding each document."""
    documents: Literal["line", "file"] = "line"
    """`text` files: one document per non-empty line, or one per file."""
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    """`csv`: the field separator (`"\t"` for TSV)."""
    quoting: bool | None = None
    """`csv`: whether `"` quotes fields. Default: off for tab-separated files (TSV has no
    quoting: a message that starts with a quote is text), on otherwise."""
    encoding: str = "utf8"
    """`csv`/`text`: the files' text encoding (e.g. `latin1`, `cp1252`); JSONL and Parquet are UTF-8."""
    limit: int | None = Field(default=None, gt=0)
    """Read only the first N records (subsets for trials and tests)."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec (credentials belong in the environment, never in lineage)."""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r} (e.g. utf8, latin1, cp1252)") from None
        return encoding

    @model_validator(mode="after")
    def _check_paths(self) -> SourceSpec:
        if self.format != "sklearn" and not self.path:
            raise ValueError(f"source.path is required for format '{self.format}'")
        if self.format == "idx" and not self.labels:
            raise ValueError("source.labels is required for format 'idx' (the IDX labels file)")
        return self


class PreprocessSpec(_Section):
    ops: list[dict[str, Any]] | None = None
    """Image or text operators in order, each `{op: NAME, **params}`; see
    `pipeline.ops.registry`. Default: decode, color, resize, dedup (images); normalize, length,
    dedup, near_dedup (text). Tables are cleaned by type instead (see below)."""
    dedup_rows: bool = True
    """`table`: reject exact duplicate rows (same values in every modelled column)."""
    max_reject_fraction: float | None = Field(default=None, ge=0, le=1)
    """Fail the run when more than this fraction of input rows is rejected. Default: 0.1;
    0.5 for text (filters and dedup routinely remove a large share of a raw text corpus)."""


class RuleSpec(_Section):
    """One labelling function over table columns: when `column` `op` `value`, vote `label`."""

    column: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "contains", "matches"]
    value: Any
    label: str
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check_value(self) -> RuleSpec:
        scalar = (str, int, float, bool)
        if self.op == "in":
            if not isinstance(self.value, list) or not self.value or not all(isinstance(v, scalar) for v in self.value):
                raise ValueError(f"value: op 'in' needs a list of values, e.g. [a, b] (got {self.value!r})")
        elif self.op in ("contains", "matches"):
            if not isinstance(self.value, str):
                raise ValueError(f"value: op '{self.op}' needs a text value (got {self.value!r})")
            if self.op == "matches":
                try:
                    re.compile(self.value)
                except re.error as err:
                    raise ValueError(f"value: {self.value!r} is not a regex: {err}") from None
        elif not isinstance(self.value, scalar):
            raise ValueError(f"value: op '{self.op}' needs one number or text (got {self.value!r})")
        return self


class LabelerSpec(_Section):
    """One labeler; the labelers run in order and each labels only rows still unlabelled."""

    type: Literal["column", "path", "rules", "model"]
    pattern: str | None = None
    """`path`: a regex searched in each row's source path; its `label` group (or first group) is the class."""
    rules: list[RuleSpec] = Field(default_factory=list)
    """`rules`: labelling functions (tables); a row where none fires is left unlabelled."""
    vote: Literal["majority", "weighted"] = "majority"
    """`rules`: how firing rules combine (majority: one vote each; weighted: `weight` each);
    the winner's share of the votes is the label confidence, ties abstain."""
    min_confidence: float = Field(default=0.95, gt=0, le=1)
    """`model`: pseudo-labels below this predicted probability go to the review queue."""
    epochs: int = Field(default=5, ge=1)
    """`model`: epochs of the fixed classifier (images) trained on the labelled rows."""

    @model_validator(mode="after")
    def _check_fields(self) -> LabelerSpec:
        if self.type == "path":
            if not self.pattern:
                raise ValueError("a path labeler needs a pattern (a regex with a group for the class)")
            try:
                if re.compile(self.pattern).groups < 1:
                    raise ValueError(f"pattern {self.pattern!r} has no group: put the class in (...)")
            except re.error as err:
                raise ValueError(f"pattern {self.pattern!r} is not a regex: {err}") from None
        if self.type == "rules" and not self.rules:
            raise ValueError("a rules labeler needs at least one rule")
        return self


class LabelQualitySpec(_Section):
    action: Literal["keep", "drop", "relabel"] = "keep"
    """What to do with rows flagged as likely mislabelled: keep them (flagged in
    `label_issue`), drop them to rejects, or relabel them with `suggested_label`."""
    folds: int = Field(default=4, ge=2, le=20)
    """Cross-validation folds for the out-of-fold predicted probabilities."""
    epochs: int = Field(default=5, ge=1)
    """Epochs of the fixed classifier per fold (images)."""


class AnnotateSpec(_Section):
    label_column: str = "label"
    """Column holding the given labels (`idx`: from the labels file; `images`: the class folder)."""
    class_names: list[str] | None = None
    """Names for label ids 0..K-1 (integer labels) or the label values in order (string labels).
    Default: the sorted distinct labels found in the data."""
    labelers: list[LabelerSpec] = Field(default_factory=lambda: [LabelerSpec(type="column")])
    """In order; each labels only the rows still unlabelled. Human labels imported with
    `datakiln annotate import` override them all. Rows left unlabelled are rejected."""
    label_quality: LabelQualitySpec | None = None
    """Confident learning on out-of-fold probabilities: flag likely mislabelled rows."""
    unlabelled: bool | None = None
    """`true`: the images have no labels; every row belongs to one set, the generator is
    unconditional, and the metrics that need classes are skipped. Default: true for an
    `images` folder in which no file sits in a class sub-folder, else false."""

    @model_validator(mode="after")
    def _labels_or_none(self) -> AnnotateSpec:
        if self.unlabelled and self.label_quality is not None:
            raise ValueError("annotate.label_quality: an unlabelled dataset has no labels to check")
        return self


class SplitSpec(_Section):
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of each class held out as the `test` split (exact per class, seeded)."""


class SynthesizeSpec(_Section):
    enabled: bool = True
    model: str | None = None
    """Default: `cvae` for images, `tvae` for tables, `textlm` for text."""
    epochs: int | None = Field(default=None, ge=1)
    """Default: the model's own (cvae/cgan 30, tvae/ctgan 300, textlm 30), for ctgan raised so
    that it trains at least 10,000 steps (a GAN needs updates: small tables get more epochs),
    for textlm kept between 1,000 and 3,000 steps (a large corpus gets fewer epochs)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Per-worker batch size (default: the model's own, cvae 128, cgan 64); the global batch
    is `batch_size * workers`."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Default: the model's own (cvae 1e-3, cgan 2e-4)."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """`linear`: the learning rate falls linearly from `learning_rate` to 0 over the run (every
    optimizer of the model; a resumed run continues the same schedule)."""
    latent_dim: int | None = Field(default=None, ge=1)
    """Default: the model's own (cvae 16, cgan 64)."""
    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """On GPU (training): `bf16` (autocast, channels_last) or `fp32`; `auto` takes
    bf16 when a worker's batch holds at least 2^21 input values (batch 4096 of 28×28), below
    which these small models are bound by kernel launches and fp32 is faster. On CPU `auto` is
    fp32 and `bf16` samples under bf16 autocast where the CPU has native bf16 (AVX-512 BF16 or
    AMX; fp32 otherwise): 2.09× faster for the photo U-Net of `cflow`. CPU training stays fp32
    (bf16 measured 0.87× there)."""
    samples_per_class: int = Field(default=1000, ge=1)
    """`image`: synthetic images per class."""
    rows: int | None = Field(default=None, ge=1)
    """`table`/`text`: synthetic rows when no `conditions` are given (default: the train
    split's size, with the target's class shares)."""
    temperature: float | None = Field(default=None, gt=0)
    """`textlm`: sampling temperature (default 1)."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """`textlm`: nucleus sampling: draw from the smallest set of tokens holding this much
    probability (default 0.95)."""
    conditions: dict[str, dict[str, int]] = Field(default_factory=dict)
    """`table`: exact counts per value of one categorical column, e.g.
    `{deposit: {"yes": 5000, "no": 5000}}`."""
    sample_steps: int | None = Field(default=None, ge=1)
    """`cflow`: integration steps per sample (default 16; an `ab2` or Euler step calls the network
    once, a Heun step twice, and guidance doubles that)."""
    guidance: float | None = Field(default=None, ge=0)
    """`cflow`: classifier-free guidance scale (default 2; 1 is plain conditional sampling)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Model-specific settings by name, e.g. `{width: 64}` (network width, all image models),
    `{diffaugment: none}` (cgan), `{solver: heun}` (cflow); a model takes the keys of its
    defaults (`synth/models/<model>.py`)."""
    sampler_actors: int = Field(default=2, ge=1)
    storage: str | None = None
    """Where Ray Train keeps checkpoints (local dir or fsspec URL). Default: `<run_dir>/train`."""
    max_failures: int = Field(default=0, ge=0)
    """Worker failures survived by restarting from the last checkpoint."""
    checkpoint_every: int | None = Field(default=None, ge=1)
    """Checkpoint every N epochs (and always after the last). Default: about ten per run
    (every epoch for runs under 20 epochs)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """How many of the latest checkpoints to keep."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        from synth.models import MODEL_NAMES

        if name is not None and name not in MODEL_NAMES:
            raise ValueError(f"unknown model '{name}'; known: {', '.join(MODEL_NAMES)}")
        return name


COMMON_MODEL_SETTINGS = ("epochs", "batch_size")


def _check_model_settings(syn: SynthesizeSpec) -> None:
    """Every model setting the spec gives is one the chosen model has."""
    from synth.models import get_model

    defaults = get_model(syn.model).defaults
    for key in ("learning_rate", "latent_dim", "sample_steps", "guidance", "temperature", "top_p"):
        if getattr(syn, key) is not None and key not in defaults:
            raise ValueError(f"synthesize.{key}: the '{syn.model}' model has no {key}")
    for key in syn.options:
        if key not in defaults or key in COMMON_MODEL_SETTINGS:
            known = ", ".join(k for k in defaults if k not in COMMON_MODEL_SETTINGS)
            raise ValueError(f"synthesize.options.{key}: not a setting of the '{syn.model}' model (its settings: {known})")


class EvaluateSpec(_Section):
    enabled: bool = True
    classifier_epochs: int = Field(default=5, ge=1)
    """Epochs of the fixed classifier recipe used for TSTR, TRTR and the feature extractor."""
    classifier: Literal["auto", "small", "photo"] = "auto"
    """The fixed classifier's recipe: `small` (two convolutions, no augmentation), `photo`
    (a batch-normalised convolution per octave, trained with random crops and flips);
    `auto` takes `photo` for colour images and `small` for grey ones."""
    augment: bool = True
    """Images: also fit the classifier on real + synthetic (`augment_accuracy`, `augment_gain`:
    does adding the synthetic set help?). That fit is as large as the TSTR and TRTR fits
    together; false skips it (the card says so)."""
    k: int = Field(default=3, ge=1)
    """Neighbours for precision/recall/density/coverage."""
    copy_fraction: float = Field(default=0.1, gt=0, le=1)
    """A synthetic image nearer to a training image than this × the median held-out
    distance counts as a near-copy (`nn_copy_fraction`)."""
    inception_weights: str | None = None
    """Local FID Inception-v3 weights (pytorch-fid's `pt_inception-2015-12-05-*.pth`): adds
    `fid_inception`. Never downloaded; costly on CPU (299×299 inputs)."""
    gates: dict[str, str] = Field(default_factory=dict)
    """Publish only when every metric meets its condition, e.g. `{tstr_ratio: ">= 0.9"}`."""

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, gates: dict[str, str]) -> dict[str, str]:
        from pipeline.gates import validate_gates

        return validate_gates(gates)

    @model_validator(mode="after")
    def _gated_metrics_are_computed(self) -> EvaluateSpec:
        if not self.augment and "augment_gain" in self.gates:
            raise ValueError("evaluate.gates.augment_gain: augment_gain is not computed when evaluate.augment is false")
        return self


class PublishSpec(_Section):
    to: str | None = None
    """fsspec URL of the dataset to write. Default: `./out/<name>`."""
    rows_per_shard: int = Field(default=20000, ge=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    overwrite: bool = False
    """Publish into a folder that holds files datakiln did not write (they are kept: datakiln
    never removes or replaces a file it did not write). A datakiln dataset is always replaced."""


class Spec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    run_root: str = "./runs"
    source: SourceSpec
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    annotate: AnnotateSpec = Field(default_factory=AnnotateSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    synthesize: SynthesizeSpec = Field(default_factory=SynthesizeSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    publish: PublishSpec = Field(default_factory=PublishSpec)

    @model_validator(mode="after")
    def _resolve_kind(self) -> Spec:
        """Fill the defaults that depend on the kind of rows, and check the pieces agree."""
        from pipeline.ops import registry
        from synth.models import DEFAULT_MODELS, MODEL_KINDS

        source = self.source
        if source.kind is None:
            source.kind = "table" if source.format in TABLE_FORMATS else source.format if source.format == "text" else "image"
        if source.kind == "table" and source.format not in TABLE_FORMATS:
            raise ValueError(f"source.kind: '{source.format}' sources hold images, not tables")
        if (source.kind == "text") != (source.format == "text") and source.format not in TABLE_FORMATS:
            raise ValueError(f"source.kind: '{source.format}' sources hold "
                             f"{'text' if source.format == 'text' else 'images'}, not {source.kind}s")
        preprocess = self.preprocess
        if preprocess.max_reject_fraction is None:
            preprocess.max_reject_fraction = 0.5 if source.kind == "text" else 0.1
        if source.kind == "table" and preprocess.ops:
            raise ValueError("preprocess.ops: image operators do not apply to a table source "
                             "(tables are cleaned by column type; see preprocess.dedup_rows)")
        if preprocess.ops is None:
            defaults = {"image": DEFAULT_IMAGE_OPS, "text": DEFAULT_TEXT_OPS}.get(source.kind, ())
            preprocess.ops = [{"op": op} for op in defaults]
        try:
            preprocess.ops = [registry.validate_params(i, op, source.kind) for i, op in enumerate(preprocess.ops)]
        except ValueError as err:
            raise ValueError(f"preprocess.ops.{err}") from None
        syn = self.synthesize
        if syn.model is None:
            syn.model = DEFAULT_MODELS[source.kind]
        if MODEL_KINDS[syn.model] != source.kind:
            raise ValueError(f"synthesize.model: '{syn.model}' does not generate {source.kind}s "
                             f"({source.kind}s: {', '.join(m for m, k in MODEL_KINDS.items() if k == source.kind)})")
        _check_model_settings(syn)
        if syn.conditions and len(syn.conditions) != 1:
            raise ValueError("synthesize.conditions: give counts for one column")
        return self

    def redacted(self) -> dict[str, Any]:
        """The resolved spec with credentials masked (`pipeline.redact`): what lineage, cards
        and logs may show."""
        return redact(self.model_dump(mode="json"))

    def require_no_inline_secrets(self, how: str) -> None:
        """Fail when the spec itself holds a credential (it is about to leave this machine in
        clear text); `how` says how to pass it instead."""
        found = secret_paths(self.model_dump(mode="json"))
        if found:
            raise SpecError(f"{found[0]}: holds a credential, which would leave this machine in clear text; "
                            f"remove it from the spec and {how}")

    def spec_hash(self) -> str:
        """sha256 of the resolved spec (credentials masked, `publish.overwrite` left out): the
        same spec with the same resolved paths gives the same hash on any machine, and rotating
        a credential does not change it."""
        raw = self.redacted()
        raw["publish"].pop("overwrite")
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def publish_target(self) -> str:
        return self.publish.to or f"./out/{self.name}"


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (typed)."""
    key_path, sep, text = assignment.partition("=")
    if not sep or not key_path:
        raise SpecError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    keys = key_path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, key, where)]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"--set {key_path}: '{'.'.join(keys[:depth])}' is not a mapping")
        if node.get(key) is None:  # an unset section (e.g. annotate.label_quality): created with its defaults
            node[key] = {}
        node = node[key]
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:  # e.g. `>= 0.9` (a gate): not YAML, meant as the text itself
        value = text
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key_path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(f"--set {key_path}: '{'.'.join(keys[:-1])}' is not a mapping")


def _list_index(node: list, key: str, where: str) -> int:
    if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
        raise SpecError(f"--set {where}: '{key}' is not an index of a list of {len(node)}")
    return int(key)


def _format_validation_error(origin: str, err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"].removeprefix("Value error, ")
        nested = re.match(r"^(\d+(?:\.\w+)?): (.*)$", msg)
        keyed = re.match(r"^([a-z_]+(?:\.\w+)+): (.*)$", msg)
        if nested:  # a list entry's own error (e.g. preprocess.ops.2.size)
            loc, msg = f"{loc}.{nested.group(1)}", nested.group(2)
        elif keyed and loc == "<root>":  # a check across sections names its own key path
            loc, msg = keyed.group(1), keyed.group(2)
        elif item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], (dict, list)):
            msg = f"{msg} (got {item['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"{origin}: " + "; ".join(parts)


def build_spec(raw: dict[str, Any], origin: str = "spec", overrides: list[str] = ()) -> Spec:
    """Validate a spec mapping after applying `--set` overrides."""
    if not isinstance(raw, dict):
        raise SpecError(f"{origin}: the spec must be a YAML mapping, got {type(raw).__name__}")
    if overrides:
        try:  # override into the defaults too (e.g. preprocess.ops.2.size when ops is defaulted)
            raw = Spec.model_validate(raw).model_dump(mode="json")
        except ValidationError:
            pass  # an override may be what makes the spec valid
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_validation_error(origin, err)) from None


SPEC_PATHS = (("run_root",), ("source", "path"), ("source", "labels"), ("synthesize", "storage"), ("publish", "to"),
              ("evaluate", "inception_weights"))
"""Keys holding paths: relative ones in a local spec file are relative to the file's folder."""


def _relative_to_spec(raw: Any, url: str) -> Any:
    """`raw` with the relative local paths it sets made absolute against the spec's folder
    (`--set` values are applied later, relative to the current directory)."""
    if not isinstance(raw, dict) or ("://" in url and not url.startswith("file://")):
        return raw
    folder = os.path.dirname(os.path.abspath(url.removeprefix("file://")))
    for keys in SPEC_PATHS:
        node = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (keys == ("source", "path") and node.get("format") == "sklearn"):
            continue
        value = node.get(keys[-1])
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            node[keys[-1]] = os.path.normpath(os.path.join(folder, value))
    return raw


def load_spec(url: str, overrides: list[str] = ()) -> Spec:
    """Read a YAML spec from any fsspec URL and validate it. Relative paths in the file are
    relative to its folder; relative paths in `overrides` to the current directory."""
    try:
        with fsspec.open(url, "r") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SpecError(f"{url}: spec file not found") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as err:
        raise SpecError(f"{url}: cannot read the spec ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{url}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
    return build_spec(_relative_to_spec(raw, url) if raw is not None else {}, origin=url, overrides=overrides)

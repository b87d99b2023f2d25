"""Text: documents from CSV/TSV, JSONL, Parquet or plain text files — the text plug-in.

One Ray Data pass runs the fused text operators (normalise, filters, PII) on every block and
gives each kept document its exact and MinHash-LSH keys; exact and near dedup then decide
on those keys (near dedup shuffles the band keys through Ray Data, see
`pipeline.ops.text.MinHashDedup`). The stage (`staged.parquet`: every row with its final
reject reason) is reused by later runs with the same inputs and operators. Labels come from
a column, rules over the text, or a TF-IDF + logistic-regression pseudo-labeler; a BPE
tokenizer is trained on the train split and a class-conditional transformer (`textlm`) on
Ray Train; sampled texts that copy a training text are redrawn (`synth.sample.sample_text`);
`synth.metrics.text` compares them with the held-out real texts. Rows publish as `text`
(a string) and `label` (a `ClassLabel`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from pipeline import io, plots, sources
from pipeline.annotate import Annotation
from pipeline.columns import keep_rows, reason_array
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import SourceError, SpecError
from pipeline.modalities.base import Modality, Staged
from pipeline.modalities.rows import class_shares, published_rows, with_annotation, write_rows
from pipeline.ops import registry
from pipeline.ops.base import REJECT_REASON, DatasetOp
from pipeline.ops.text import FusedTextOps, NearDedupParams
from pipeline.publish import annotation_features, arrow_schema, string_features
from pipeline.sources.tables import READ_ERROR
from pipeline.split import SPLIT_CODES, ref_hashes
from pipeline.stage import stage_folder, stage_key

PROVENANCE = ("origin", "generator", "source_ref")
LABEL_COLUMNS = ("label_source", "label_confidence", "label_issue", "suggested_label")
STAGE_FILE = "staged.parquet"
DOCUMENTS_PER_BATCH = 4096
"""Documents the row operators take at once, whatever the size of a source file: a worker's
memory does not grow with the files."""
READING_GUIDE = [
    "How to read these numbers. **Utility**: a fixed TF-IDF + logistic-regression recipe trained on",
    "synthetic texts (TSTR) or real train texts (TRTR), tested on the real test split; `tstr_ratio` is",
    "their macro-F1 ratio. **Fidelity** on a TF-IDF → SVD embedding fitted on the real train split:",
    "`frechet` (lower is better), `precision` / `recall` / `density` / `coverage` and `mauve` (higher is",
    "better); the floor column is real train against real test. **Diversity**: `distinct_n` (higher: more",
    "varied), `self_bleu` (higher: more alike). **Memorisation**: `exact_copies` and `near_copies` of",
    "training texts (sampling redraws them, so both should be 0) and the longest word n-gram shared",
    "with a training text. `length_ks`: distance between word-count distributions.",
]


def _prepare(table: pa.Table, spec_source: dict[str, Any], label_column: str, keep: list[str],
             entries: list[dict[str, Any]]) -> pa.Table:
    """One block: the text column as `text`, the label column (null where the source has
    none), the columns rules read, then the fused operators."""
    text_column = spec_source["text_column"] if spec_source["format"] != "text" else "text"
    unreadable = READ_ERROR in table.column_names
    n = table.num_rows
    if text_column not in table.column_names:
        if not unreadable:
            where = table["source_ref"][0].as_py().split("#")[0] if n else spec_source["path"]
            raise SourceError(f"{where}: no text column '{text_column}' (columns: "
                              f"{', '.join(c for c in table.column_names if c != 'source_ref')}); set source.text_column")
        table = table.append_column(text_column, pa.nulls(n, pa.string()))
    columns = {"source_ref": table["source_ref"], "text": table[text_column].cast(pa.string())}
    label = table[label_column].cast(pa.string()) if label_column in table.column_names else pa.nulls(n, pa.string())
    columns[label_column] = pa.array([v.strip() if v is not None else None for v in label.to_pylist()], pa.string())
    for name in keep:
        if name not in columns:
            columns[name] = table[name] if name in table.column_names else pa.nulls(n, pa.string())
    if unreadable:
        columns[REJECT_REASON] = table[READ_ERROR]
    columns["ref_hash"] = pa.array(ref_hashes(table["source_ref"].to_pylist()), pa.uint64())
    return FusedTextOps(entries)(pa.table(columns))


class TextClassifier:
    """The model labeler's and label quality's classifier: the evaluation suite's TF-IDF +
    logistic regression on the staged texts (row indices into them)."""

    def __init__(self, texts: list[str | None]):
        self.texts = np.array([t or "" for t in texts], dtype=object)

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        from synth.metrics.text import fixed_text_classifier

        model = fixed_text_classifier(seed).fit(list(self.texts[train]), labels)
        probs = np.zeros((len(rows), num_classes))
        probs[:, model.classes_] = model.predict_proba(list(self.texts[rows]))
        return probs


class TextModality(Modality):
    unit = "rows"
    key_metrics = ("tstr_f1", "tstr_ratio", "mauve", "exact_copies", "near_copies")
    logged_metrics = ("tstr_f1", "trtr_f1", "tstr_ratio", "frechet", "mauve", "distinct_2", "exact_copies",
                      "near_copies")

    @property
    def label_column(self) -> str:
        return self.spec.annotate.label_column

    def preflight(self) -> None:
        if self.spec.annotate.unlabelled:
            raise SpecError("annotate.unlabelled: text datasets need labels (a label column, rules or a path pattern)")

    def _rule_columns(self) -> list[str]:
        """The source's other columns that rule labelers read (a rule on the text column
        reads the normalised text)."""
        columns = [rule.column for labeler in self.spec.annotate.labelers for rule in labeler.rules]
        taken = ("text", "source_ref", self.label_column, self.spec.source.text_column)
        return list(dict.fromkeys(c for c in columns if c not in taken))

    def collect(self):
        spec = self.spec
        collected = sources.read(spec.source)
        what = (f"text files, one document per {spec.source.documents}" if spec.source.format == "text"
                else f"{spec.source.format}, text in '{spec.source.text_column}'")
        log("collect", f"{spec.source.path}: {what}")
        return collected

    def near_settings(self) -> dict[str, Any]:
        """The MinHash settings of the spec's near dedup (the defaults when it has none): what
        counts as a near copy for sampling and memorisation too."""
        entry = next((e for e in self.spec.preprocess.ops if e["op"] == "near_dedup"), {})
        return NearDedupParams.model_validate({k: v for k, v in entry.items() if k != "op"}).model_dump()

    def stage(self, collected, fresh: bool) -> Staged:
        spec = self.spec
        entries = spec.preprocess.ops
        keep = self._rule_columns()
        key = stage_key(spec, collected.fingerprints, self.run.code_version, ops=entries, keep=keep,
                        label_column=self.label_column)
        folder = stage_folder(spec, key, fresh)
        path = folder.join(STAGE_FILE)
        reused = folder.fs.exists(path.path)
        if reused:
            with folder.fs.open(path.path, "rb") as handle:
                staged = pq.read_table(handle)
            log("preprocess", f"{staged.num_rows:,} documents from the stage of an earlier run ({key})")
        else:
            staged = self._run_operators(collected, entries, keep)
            folder.fs.makedirs(folder.path, exist_ok=True)
            with folder.fs.open(f"{path.path}.partial", "wb") as handle:
                pq.write_table(staged, handle)
            folder.fs.mv(f"{path.path}.partial", path.path)  # complete or absent
        found = Counter()
        for entry in pc.drop_null(pc.filter(staged["found"], pc.not_equal(staged["found"], ""))).to_pylist():
            found.update({kind: int(count) for kind, count in (item.split(":") for item in entry.split(","))})
        self.found = dict(sorted(found.items()))
        if self.found:
            detail("preprocess", "operators found: " + ", ".join(f"{k} {v}" for k, v in self.found.items()))
        self.rows = staged.drop_columns(["found", "ref_hash"])
        keys = self.rows.drop_columns([REJECT_REASON])
        if spec.source.text_column not in keys.column_names:  # rules may name the source's text column
            keys = keys.append_column(spec.source.text_column, keys["text"])
        return Staged(keys=keys, given=self.rows[self.label_column], reasons=reason_array(self.rows[REJECT_REASON]),
                      ref_hashes=staged["ref_hash"].to_numpy(), stage={"key": key, "folder": folder.url, "reused": reused})

    def _run_operators(self, collected, entries: list[dict[str, Any]], keep: list[str]) -> pa.Table:
        spec = self.spec
        marked = collected.dataset.map_batches(
            _prepare, batch_format="pyarrow", batch_size=DOCUMENTS_PER_BATCH,
            fn_kwargs={"spec_source": spec.source.model_dump(include={"text_column", "format", "path"}),
                       "label_column": self.label_column, "keep": keep, "entries": entries})
        progress = CONSOLE.progress("preprocess", collected.rows, "docs")
        parts = []
        for part in marked.iter_batches(batch_format="pyarrow", batch_size=None):
            if part.num_rows:
                parts.append(part)
                progress.update(progress.done + part.num_rows)
        if not parts:
            raise SourceError(f"{spec.source.path}: the source holds no documents")
        staged = pa.concat_tables(parts, promote_options="permissive")
        reasons = reason_array(staged[REJECT_REASON])
        decided = []
        for entry in entries:
            op = registry.build(entry, "text")
            if isinstance(op, DatasetOp):
                decided.append(f"{entry['op']} {len(op.decide(staged, reasons))}")
        progress.close(f"{staged.num_rows:,} documents, {int((reasons != '').sum()):,} rejected"
                       + (f" ({', '.join(decided)})" if decided else ""))
        # Without the texts of rejected rows: their reason is final, and a corpus of copies is mostly them.
        columns = {name: staged[name] for name in staged.column_names if name not in ("text", "content_hash")}
        columns.update({"text": keep_rows(staged["text"], reasons == ""), REJECT_REASON: pa.array(reasons, pa.string())})
        return pa.table(columns).select([c for c in staged.column_names if c != "content_hash"])

    def classifier(self) -> TextClassifier:
        return TextClassifier(self.rows["text"].to_pylist())

    def annotated(self, annotation: Annotation) -> str:
        self.rows = with_annotation(self.rows, annotation, self.label_column)
        return annotation.summary()

    def review_items(self, rows: np.ndarray) -> dict[str, Any]:
        return {"values": self.rows.select(["text"]).take(pa.array(rows)).to_pylist()}

    def split(self, codes: np.ndarray, annotation: Annotation) -> dict[str, int]:
        rows = self.rows.rename_columns(["label" if c == self.label_column else c for c in self.rows.column_names])
        columns = ["text", "label"] + [c for c in LABEL_COLUMNS if c in rows.column_names] + ["source_ref"]
        self.frames = {split: rows.select(columns).filter(pa.array(codes == code)) for split, code in SPLIT_CODES.items()}
        return {split: frame.num_rows for split, frame in self.frames.items()}

    def _labelled(self, split: str, annotation: Annotation) -> tuple[list[str], np.ndarray]:
        index = {n: i for i, n in enumerate(annotation.class_names)}
        frame = self.frames[split]
        return frame["text"].to_pylist(), np.array([index[v] for v in frame["label"].to_pylist()], dtype=np.int64)

    def training_data(self, annotation: Annotation):
        from synth.models import get_model
        from synth.models.base import with_defaults
        from synth.models.textlm import TextSchema
        from synth.text import TextTokenizer

        texts, labels = self._labelled("train", annotation)
        config = with_defaults(get_model(self.spec.synthesize.model), self.spec.synthesize.options)
        tokenizer = TextTokenizer.fit(texts, len(annotation.class_names), config["vocab_size"], config["max_tokens"])
        packed = tokenizer.pack(tokenizer.documents(texts, labels), self.spec.seed)
        self.tokenizer = {"vocab_size": tokenizer.vocab_size, "max_tokens": tokenizer.max_tokens}
        data = ray.data.from_numpy(packed).rename_columns({"data": "features"})
        return data, TextSchema(tokenizer.to_json(), len(annotation.class_names)), (
            f"{len(texts):,} texts packed into {len(packed):,} rows of {tokenizer.max_tokens} tokens "
            f"(BPE vocabulary {tokenizer.vocab_size:,})")

    def _plan(self, annotation: Annotation) -> list[tuple[int, int]]:
        """(class id, texts) to generate: the spec's `conditions` on the label column, or the
        train split's class shares scaled to `synthesize.rows` (default: the train split's size)."""
        names = annotation.class_names
        syn = self.spec.synthesize
        if syn.conditions:
            (column, counts), = syn.conditions.items()
            if column not in (self.label_column, "label"):
                raise SpecError(f"synthesize.conditions.{column}: text is conditioned on its label "
                                f"('{self.label_column}') only")
            unknown = [v for v in counts if str(v) not in names]
            if unknown:
                raise SpecError(f"synthesize.conditions.{column}: no class {unknown[0]!r} (classes: {', '.join(names)})")
            return [(names.index(str(v)), int(n)) for v, n in counts.items()]
        train = self.frames["train"]
        shares = class_shares(train["label"].to_pylist(), syn.rows or train.num_rows)
        return [(names.index(v), n) for v, n in shares]

    def sample(self, model_dir: str, generator_id: str, annotation: Annotation) -> int:
        from synth.progress import watch
        from synth.sample import sample_text

        names = annotation.class_names
        plan = self._plan(annotation)
        train_texts = self.frames["train"]["text"].to_pylist()
        progress = CONSOLE.progress("sample", sum(n for _, n in plan), "texts")
        parts = []
        with watch(lambda state: progress.update(state["done"])) as board:
            dataset = sample_text(model_dir, plan, self.spec.seed, generator_id, self.spec.synthesize.sampler_actors,
                                  train_texts, self.near_settings(), board=board)
            parts = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
        synthetic = pa.concat_tables(parts)
        redraws = synthetic["redraws"].to_numpy()
        self.sampling = {"redrawn_texts": int((redraws > 0).sum()), "redraws": int(redraws.sum())}
        self.synthetic = pa.table({"text": synthetic["text"],
                                   "label": pa.array([names[i] for i in synthetic["label"].to_pylist()], pa.string()),
                                   "source_ref": synthetic["source_ref"]})
        progress.close(f"{self.synthetic.num_rows:,} texts from {generator_id}: "
                       + ", ".join(f"{names[c]} {n}" for c, n in plan)
                       + f"; {self.sampling['redrawn_texts']} redrawn (empty or copying a training text)")
        return self.synthetic.num_rows

    def evaluate(self, annotation: Annotation, step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
        from synth.metrics.text import evaluate_text

        index = {n: i for i, n in enumerate(annotation.class_names)}
        synthetic = (self.synthetic["text"].to_pylist(),
                     np.array([index[v] for v in self.synthetic["label"].to_pylist()], dtype=np.int64))
        metrics = evaluate_text(self._labelled("train", annotation), self._labelled("test", annotation), synthetic,
                                annotation.class_names, self.near_settings(), self.spec.seed, self.spec.evaluate.k,
                                step=step)
        metrics.update(self.sampling)
        return metrics, {}

    def publish(self, staging: io.Location, annotation: Annotation, generator_id: str | None) -> tuple[dict[str, int], int]:
        import datasets

        names = annotation.class_names
        self.schema = arrow_schema({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names)),
                                    **annotation_features(names, label_quality=annotation.issue is not None),
                                    **string_features(PROVENANCE)})
        rows_per_shard = self.spec.publish.rows_per_shard
        published = {split: write_rows(published_rows(self.frames[split], "label", names, "real", None),
                                       staging.join("data"), split, self.schema, rows_per_shard)
                     for split in SPLIT_CODES}
        synthetic_rows = 0
        if getattr(self, "synthetic", None) is not None:
            synthetic_rows = write_rows(published_rows(self.synthetic, "label", names, "synthetic", generator_id),
                                        staging.join("synthetic"), "train", self.schema, rows_per_shard)
        return published, synthetic_rows

    def lineage(self) -> dict[str, Any]:
        record: dict[str, Any] = {"text_operators": self.found, "near_dedup": self.near_settings()}
        if getattr(self, "tokenizer", None):
            record["tokenizer"] = {"kind": "byte-level BPE (tokenizers)", **self.tokenizer}
        if getattr(self, "sampling", None):
            record["sampling"] = self.sampling
        return record

    def plots(self, staging: io.Location, annotation: Annotation) -> None:
        if getattr(self, "synthetic", None) is not None:
            plots.put_plot(staging, "lengths.png", lambda path: plots.length_histograms(
                _words_by_class(self.frames["train"], annotation.class_names),
                _words_by_class(self.synthetic, annotation.class_names), annotation.class_names, path))

    def card(self, annotation: Annotation) -> dict[str, Any]:
        names = annotation.class_names
        synthetic = getattr(self, "synthetic", None) is not None
        sections = _ngram_section(self.frames["train"], self.synthetic if synthetic else None, names)
        sections += _examples_section(self.frames["train"], self.synthetic if synthetic else None, names)
        if synthetic:
            sections += ["Training losses per epoch:", "", "![losses](losses.png)", ""]
        return {"schema": self.schema, "task": "text-classification", "tags": ("datakiln", "synthetic", "text"),
                "about": ("generated texts in the `synthetic` config. `text` is a string and `label` a ClassLabel;",
                          "every row has `origin` (`real`/`synthetic`); real rows have `source_ref` pointing at their",
                          "source record."),
                "classes": f"Classes of `label` ({len(names)}): {', '.join(names)}",
                "curation": _curation(self.found),
                "reading_guide": READING_GUIDE,
                "quality_plots": ["Words per text, real (train split) against synthetic, by class:", "",
                                  "![lengths](lengths.png)", ""] if synthetic else [],
                "sections": sections}


def _words_by_class(frame: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    texts, labels = frame["text"].to_pylist(), frame["label"].to_pylist()
    return {name: np.array([len(t.split()) for t, v in zip(texts, labels) if v == name]) for name in names}


def _curation(found: dict[str, int]) -> list[str]:
    pii = {k.removeprefix("pii_"): v for k, v in found.items() if k.startswith("pii_")}
    if not pii:
        return []
    return ["Personal data replaced by typed placeholders (`<EMAIL>`, `<PHONE>`, …): "
            + ", ".join(f"{kind} {count}" for kind, count in pii.items()) + ".", ""]


NGRAMS_SHOWN = 8
EXAMPLES_SHOWN = 3


def _ngram_section(real: pa.Table, synthetic: pa.Table | None, names: list[str]) -> list[str]:
    from synth.metrics.text import top_ngrams

    lines = ["## Top word bigrams per class", "", "| class | real | synthetic |", "| --- | --- | --- |"]
    for name in names:
        cells = []
        for frame in (real, synthetic):
            if frame is None:
                cells.append("")
                continue
            texts = [t for t, v in zip(frame["text"].to_pylist(), frame["label"].to_pylist()) if v == name]
            cells.append(", ".join(f"`{g}` {n}" for g, n in top_ngrams(texts, 2, NGRAMS_SHOWN)))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _examples_section(real: pa.Table, synthetic: pa.Table | None, names: list[str]) -> list[str]:
    lines = ["## Example rows", "", "| class | origin | text |", "| --- | --- | --- |"]
    for name in names:
        for origin, frame in (("real", real), ("synthetic", synthetic)):
            if frame is None:
                continue
            texts = [t for t, v in zip(frame["text"].to_pylist(), frame["label"].to_pylist()) if v == name]
            for text in texts[:EXAMPLES_SHOWN]:
                shown = " ".join(text.split())
                shown = (shown[:157] + "…") if len(shown) > 160 else shown
                lines.append(f"| {name} | {origin} | {shown.replace('|', '∣')} |")
    return lines + [""]

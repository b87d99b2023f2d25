"""Text: operators, MinHash near dedup, the tokenizer, the language model and the metrics."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import load_spec, run
from pipeline.ops import registry
from pipeline.ops import text as text_ops
from pipeline.ops.base import Reject
from pipeline.ops.text import FusedTextOps, quality_failure
from synth.metrics.text import distinct_n, longest_shared_ngram, utility
from synth.minhash import MinHasher, MinHashSettings, NearCopyIndex, batch_shingles, jaccard, shingles
from synth.text import TextTokenizer
from tests.conftest import ROOT, SHARED_DATA, load_published, needs_shared


def _op(name: str, **params):
    return registry.build({"op": name, **params}, "text")


def _apply(op, text: str) -> str:
    return op.apply(text, Counter())


def test_normalize_repairs_mojibake_entities_compatibility_forms_and_whitespace():
    op = _op("normalize")
    assert _apply(op, "caf\u00c3\u00a9  &amp;\tthat\x92s   ok ") == "café & that's ok"
    assert _apply(op, "\ufb01ne \uff21\uff22 &lt;#&gt;") == "fine AB <#>"  # ligature, full width, entities
    assert _apply(op, "a\u0000b\n\n\n\nc") == "ab\n\nc"  # control characters gone, one blank line kept
    assert _apply(_op("normalize", html_entities=False, lowercase=True), "&amp; Hi") == "&amp; hi"


def test_length_and_language_filters_reject_with_a_reason():
    with pytest.raises(Reject, match="3 words < 4"):
        _apply(_op("length", min_words=4), "one two three")
    assert _apply(_op("length", max_chars=5), "short") == "short"
    english = "The weather is lovely today and we are going for a long walk in the park."
    found = Counter()
    assert _op("language", langs=["en"]).apply(english, found) == english and found["language_en"] == 1
    with pytest.raises(Reject, match=r"en \(0\.\d\d\) not in de, fr"):
        _apply(_op("language", langs=["de", "fr"]), english)
    assert _apply(_op("language", langs=["de"]), "Das Wetter ist heute schön und wir gehen im Park spazieren.")


def test_gopher_quality_rules_keep_prose_and_name_the_rule_a_page_fails():
    rng = random.Random(0)
    common = "the of and to that have with be in a is for on it as was by at from this".split()
    vocabulary = common + [f"word{i}" for i in range(400)]
    prose = " ".join(rng.choice(vocabulary) for _ in range(300))
    params = text_ops.QualityParams()
    assert quality_failure(prose, params) == ""
    assert quality_failure("too short to be a web page", params) == "7 words < 50"
    assert quality_failure("\n".join([prose[:400]] * 20), params) == "duplicate lines 0.95 > 0.3"
    assert quality_failure(prose + " #tag" * 40, params) == "symbol/word ratio 0.12 > 0.1"
    assert quality_failure(" ".join(["extraordinarily"] * 60), params) == "mean word length 15.0 > 10"
    short = params.model_copy(update={"min_words": None, "min_stop_words": None, "max_top_ngram_chars": None})
    assert quality_failure("a handful of distinct words here", short) == ""


def test_pii_is_replaced_by_typed_placeholders_and_counted_with_checksums():
    op = _op("pii")
    found = Counter()
    text = ("mail jane.doe@example.co.uk or call +44 20 7946 0958, card 4111 1111 1111 1111, "
            "not a card 4111 1111 1111 1112, IBAN GB82 WEST 1234 5698 7654 32 from 192.168.1.20; code 87121")
    out = op.apply(text, found)
    assert out == ("mail <EMAIL> or call <PHONE>, card <CARD>, not a card 4111 1111 1111 1112, "
                   "IBAN <IBAN> from <IP>; code 87121")
    assert found == Counter({"pii_email": 1, "pii_phone": 1, "pii_card": 1, "pii_iban": 1, "pii_ip": 1})
    assert text_ops.luhn_valid("79927398713") and not text_ops.luhn_valid("79927398710")
    assert text_ops.iban_valid("DE89 3704 0044 0532 0130 00") and not text_ops.iban_valid("DE89 3704 0044 0532 0130 01")


def test_the_fused_pass_keeps_every_row_and_gives_kept_rows_their_keys():
    entries = [registry.validate_params(i, {"op": op}, "text") for i, op in enumerate(("normalize", "length", "near_dedup"))]
    table = pa.table({"text": ["Hello  there", "   ", None, "Bye"], "source_ref": ["a", "b", "c", "d"],
                      "reject_reason": [None, None, None, "read: wrong number of fields"]})
    out = FusedTextOps(entries)(table)
    assert out.num_rows == 4
    assert out["text"].to_pylist() == ["Hello there", None, None, None]
    assert out["reject_reason"].to_pylist() == ["", "length: 0 characters < 1", "read: no text",
                                                "read: wrong number of fields"]
    assert out["content_hash"].type == pa.binary(16) and out["content_hash"][0].as_py() == text_ops.content_hash(
        "Hello there")


def test_minhash_signatures_match_a_per_document_computation_and_estimate_jaccard():
    rng = random.Random(1)
    words = [f"w{i}" for i in range(300)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(150)] + ["a", "ab", ""]
    settings = MinHashSettings(permutations=128, bands=16)
    hasher = MinHasher(settings)
    signatures = hasher.signatures(docs)
    for i in (0, 7, 150, 151, 152):
        own = shingles(docs[i], settings.ngram, settings.unit)
        expected = (np.full(128, 2**32 - 1, dtype=np.uint64) if len(own) == 0 else
                    ((own[None, :] * hasher.a[:, None] + hasher.b[:, None]) >> np.uint64(32)).min(axis=1))
        assert np.array_equal(signatures[i], expected)
    base = docs[3]
    errors = []
    for edits in range(1, 12):
        tokens = base.split()
        for k in range(edits):
            tokens[(k * 7) % len(tokens)] = f"x{k}"
        other = " ".join(tokens)
        estimate = float((hasher.signatures([base])[0] == hasher.signatures([other])[0]).mean())
        errors.append(abs(estimate - jaccard(base, other, settings.ngram, settings.unit)))
    assert np.mean(errors) < 0.06
    hashes, counts = batch_shingles(["abcdef", "ab", ""], 5, "char")
    assert counts.tolist() == [2, 1, 0] and len(hashes) == 3


def _planted(seed: int = 0):
    """200 documents of 50-80 words, each copied with 1-3 words edited; 100 messages of 20
    words, each copied with one word edited; 100 unrelated documents."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]
    docs, planted = [], set()

    def add(words: list[str], edits: int) -> None:
        docs.append(" ".join(words))
        edited = list(words)
        for position in rng.sample(range(len(words)), edits):
            edited[position] = rng.choice(vocabulary)
        planted.add((len(docs) - 1, len(docs)))
        docs.append(" ".join(edited))

    for _ in range(200):
        add([rng.choice(vocabulary) for _ in range(rng.randint(50, 80))], rng.randint(1, 3))
    for _ in range(100):
        add([rng.choice(vocabulary[:1000]) for _ in range(20)], 1)
    docs += [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 60))) for _ in range(100)]
    return docs, planted


def _near_dedup(docs: list[str]) -> list[tuple[int, int, float]]:
    entries = [registry.validate_params(i, {"op": op}, "text") for i, op in enumerate(("normalize", "near_dedup"))]
    table = FusedTextOps(entries)(pa.table({"text": docs, "source_ref": [f"doc#{i}" for i in range(len(docs))]}))
    reasons = np.array(table["reject_reason"].to_pylist(), dtype=object)
    found = registry.build(entries[1], "text").decide(table, reasons)
    assert sum(r.startswith("near_dedup: near duplicate of doc#") for r in reasons) == len(found)
    return found


def test_near_dedup_finds_planted_near_duplicates_long_and_short_at_the_defaults():
    docs, planted = _planted()
    found = {(kept, dropped) for kept, dropped, _ in _near_dedup(docs)}
    recall = len(found & planted) / len(planted)
    precision = len(found & planted) / max(1, len(found))
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    short = [(a, b) for a, b in planted if len(docs[a].split()) == 20]
    assert len(short) == 100 and len(set(short) & found) >= 95  # one-word edits of 20-word messages


def test_candidate_pairs_over_many_blocks_equal_one_sort_of_every_key(monkeypatch):
    docs, _ = _planted(seed=2)
    settings = MinHashSettings()
    keys = MinHasher(settings).keys(docs)
    rows = np.arange(len(docs))
    flat_keys, flat_rows = keys.T.ravel(), np.tile(rows, keys.shape[1])
    order = np.lexsort((flat_rows, flat_keys))
    first, second = text_ops._group_pairs(flat_keys[order], flat_rows[order])
    expected = np.unique(np.stack([first, second], axis=1), axis=0)
    monkeypatch.setattr(text_ops, "DOCUMENTS_PER_BLOCK", 37)  # 22 blocks: runs of a key cross block edges
    column = pa.chunked_array([pa.array(list(part)) for part in np.array_split(np.array(docs, dtype=object), 3)])  # chunks
    pairs, shared = text_ops.candidate_pairs(text_ops.key_blocks(column, rows, settings), settings.bands, 7)
    assert np.array_equal(pairs, expected) and shared.min() >= 1 and shared.max() <= settings.bands


def test_merged_pass_counts_equal_one_count_over_every_pass():
    rng = np.random.default_rng(3)
    keys, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    passes = [(rng.integers(0, 5_000, n), rng.integers(1, 3, n).astype(np.uint8)) for n in (3_000, 0, 4_000, 1)]
    for more, more_counts in passes:
        keys, counts = text_ops.merge_counts(keys, counts, more, more_counts)
    every, inverse = np.unique(np.concatenate([p[0] for p in passes]), return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=np.concatenate([p[1] for p in passes]))
    assert np.array_equal(keys, every) and np.array_equal(counts, totals) and counts.dtype == np.uint8


def test_clusters_keep_their_first_document_whatever_the_input_order():
    base = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all day long"
    variants = [base, base.replace("quick", "quack"), base.replace("lazy", "lousy"), base.replace("warm", "hot")]
    found = _near_dedup(["unrelated words here entirely different", *variants])
    assert {kept for kept, _, _ in found} == {1} and {dropped for _, dropped, _ in found} == {2, 3, 4}


def test_near_copy_index_sees_exact_and_edited_copies_only():
    train = ["Free entry in a weekly competition to win cup final tickets, text FA to 87121",
             "I will be home late tonight, keep some dinner for me please"]
    index = NearCopyIndex(train, MinHashSettings())
    copies = index.copies(["free entry in a  weekly competition to win cup final tickets, text FA to 87121",
                           "I will be home late tonight, keep some dinner for me pls",
                           "Totally new message about the weather"])
    assert copies.tolist() == [True, True, False]


def test_the_tokenizer_is_deterministic_round_trips_text_and_packs_every_document():
    texts = [f"Message {i}: see you at {i % 12} o'clock, café ☕ ok?" for i in range(200)]
    labels = np.arange(200) % 2
    tokenizer = TextTokenizer.fit(texts, 2, 300, 64)
    assert tokenizer.to_json() == TextTokenizer.fit(texts, 2, 300, 64).to_json()
    documents = tokenizer.documents(texts, labels)
    assert tokenizer.decode(np.array([d[1:] + [tokenizer.pad_id] * 3 for d in documents[:5]])) == texts[:5]
    packed = tokenizer.pack(documents, seed=0)
    segments = packed[:, 1]
    assert (segments > 0).sum() == sum(len(d) for d in documents)
    assert (packed[:, 0][segments > 0] == tokenizer.class_id(0)).sum() + \
        (packed[:, 0][segments > 0] == tokenizer.class_id(1)).sum() == 200
    assert np.array_equal(packed, tokenizer.pack(documents, seed=0))


def test_the_language_model_learns_and_samples_each_row_the_same_in_any_batch():
    from synth.models import get_model
    from synth.models.base import row_noise, with_defaults
    from synth.models.textlm import TextSchema

    texts = [("buy cheap watches now " if i % 2 else "see you at lunch ") + str(i % 5) for i in range(64)]
    labels = np.arange(64) % 2
    tokenizer = TextTokenizer.fit(texts, 2, 300, 32)
    model = get_model("textlm")
    config = with_defaults(model, {"width": 32, "layers": 1, "heads": 2, "dropout": 0.0})
    schema = TextSchema(tokenizer.to_json(), 2)
    torch.manual_seed(0)
    networks = model.build(schema, config)
    optimizers = model.optimizers(networks, config)
    batch = {"features": torch.from_numpy(tokenizer.pack(tokenizer.documents(texts, labels), 0))}
    losses = [float(model.training_step(networks, *model.inputs(batch), optimizers)["loss"]) for _ in range(100)]
    assert losses[-1] < 0.4 * losses[0]
    sampler = networks["lm"].eval()
    ids = np.arange(10)
    noise = torch.from_numpy(row_noise(3, ids, model.noise_dim(config, schema)))
    classes = torch.from_numpy(ids % 2)
    together = model.sample(sampler, classes, noise)
    apart = torch.cat([model.sample(sampler, classes[:3], noise[:3]), model.sample(sampler, classes[3:], noise[3:])])
    assert torch.equal(together, apart)
    logits, _ = sampler.step(torch.tensor([[tokenizer.class_id(0)], [tokenizer.class_id(1)]]), 0, None)
    first = torch.softmax(logits[:, -1], dim=-1)[:, tokenizer.tokenizer.token_to_id("buy")]
    assert first[1] > 5 * first[0]  # the class token steers the text


def test_nucleus_draws_only_from_the_top_p_set():
    from synth.models.textlm import _nucleus_draw

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64).repeat(1000, 1)
    uniform = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    drawn = _nucleus_draw(probs, 0.8, uniform)
    assert set(drawn.tolist()) == {0, 1}
    assert abs(float((drawn == 0).double().mean()) - 0.5 / 0.8) < 0.05


def test_text_metrics_measure_what_they_name():
    train = ["win a free prize now", "call now to claim cash", "see you at dinner", "love you see you soon"] * 10
    labels = np.array([1, 1, 0, 0] * 10)
    test = ["claim your free cash prize", "dinner at home tonight"]
    scores = utility((train, labels), (test, np.array([1, 0])), (train, labels), ["chat", "offer"], 0)
    assert scores["tstr_f1"] == scores["trtr_f1"] == 1.0 and scores["tstr_ratio"] == 1.0
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b c", "a b c"], 2) == 0.5
    shared = longest_shared_ngram(["x y see you at dinner z", "nothing here"], ["we see you at dinner", "hi"])
    assert shared.tolist() == [4, 0]


@pytest.mark.integration
@needs_shared
def test_sms_subset_end_to_end(tmp_path):
    """The SMS example on its first 1,200 messages with a tiny model: every row accounted for,
    duplicates rejected, labels as a ClassLabel, no copy of a training text published."""
    spec = load_spec(str(ROOT / "examples" / "sms.yaml"), [
        f"source.path={SHARED_DATA / 'sms_spam' / 'SMSSpamCollection'}", "source.limit=1200",
        "synthesize.epochs=2", "synthesize.rows=120", "synthesize.options={width: 32, layers: 1, heads: 2, vocab_size: 400}",
        "annotate.labelers=[{type: column}, {type: rules, rules: [{column: sms_message, op: contains, value: FREE, label: spam}]}]",
        "preprocess.ops=[{op: normalize}, {op: length}, {op: pii}, {op: dedup}, {op: near_dedup}]",
        f"publish.to={tmp_path / 'out'}", f"run_root={tmp_path / 'runs'}"])
    report = run(spec)
    rows = report.lineage["rows"]
    assert rows["rows_in"] == 1200 == rows["rows_out"] + rows["rows_rejected"]
    normalize, pii = _op("normalize"), _op("pii")
    messages = [line.split("\t", 1)[1] for line in
                (SHARED_DATA / "sms_spam" / "SMSSpamCollection").read_text().splitlines()[1:1201]]
    distinct = {_apply(pii, _apply(normalize, m)) for m in messages}
    assert rows["rejected_by_reason"]["dedup: duplicate"] == 1200 - len(distinct) > 20
    real = load_published(str(tmp_path / "out"), tmp_path=tmp_path)
    synthetic = load_published(str(tmp_path / "out"), "synthetic", tmp_path=tmp_path)["train"]
    assert real["train"].features["label"].names == ["ham", "spam"]
    assert real["train"].features["text"].dtype == "string" == synthetic.features["text"].dtype
    assert len(synthetic) == 120 and set(synthetic["origin"]) == {"synthetic"}
    assert all(not t.startswith(" ") and "&lt;" not in t for t in real["train"]["text"])  # normalised
    train = {" ".join(t.casefold().split()) for t in real["train"]["text"]}
    assert not [t for t in synthetic["text"] if " ".join(t.casefold().split()) in train]
    assert report.metrics["exact_copies"] == 0 and 0 <= report.metrics["tstr_f1"] <= 1
    found = report.lineage["text_operators"]
    assert found["pii_phone"] == sum(_apply(pii, _apply(normalize, m)).count("<PHONE>") for m in messages) > 20
    assert "<PHONE>" in " ".join(real["train"]["text"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"phone {found['pii_phone']}" in card
    assert "## Top word bigrams per class" in card and "## Example rows" in card and "text-classification" in card


def test_text_sources_read_lines_files_and_tsv_without_quoting(tmp_path):
    from pipeline import sources
    from pipeline.spec import SourceSpec

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first line\n\n  \nsecond line\n")
    (tmp_path / "docs" / "b.txt").write_text("only line")
    by_line = sources.read(SourceSpec(format="text", path=str(tmp_path / "docs"))).dataset.take_all()
    assert [(r["text"], r["source_ref"]) for r in by_line] == [("first line", "a.txt#1"), ("second line", "a.txt#4"),
                                                               ("only line", "b.txt#1")]
    by_file = sources.read(SourceSpec(format="text", path=str(tmp_path / "docs"), documents="file")).dataset.take_all()
    assert [r["text"] for r in by_file] == ["first line\n\n  \nsecond line\n", "only line"]
    (tmp_path / "m.tsv").write_text('label\tmessage\nham\t"Quoted" start, then more\nspam\tplain "quote" inside\n')
    rows = sources.read(SourceSpec(format="csv", kind="text", path=str(tmp_path / "m.tsv"), delimiter="\t")).dataset
    assert [r["message"] for r in rows.take_all()] == ['"Quoted" start, then more', 'plain "quote" inside']

"""Tables: lossless encoding, exact conditional sampling, cleaning/rejects, metric sanity."""

import datetime
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.cli import main
from pipeline.gates import TABLE_METRICS
from synth.metrics.tabular import privacy, quality
from synth.models.table import activate, condition_batch, condition_loss, draw, reconstruction_loss
from synth.tabular import TableEncoder, infer_kinds
from tests.conftest import ROOT, load_published, needs_shared

RNG = np.random.default_rng(0)


def _mixed_table(rows: int = 600) -> pa.Table:
    income = RNG.lognormal(10, 1, rows)
    return pa.table({
        "age": pa.array(RNG.integers(18, 90, rows), pa.int64()),
        "income": pa.array(np.where(RNG.random(rows) < 0.05, np.nan, income), pa.float64(),
                           mask=RNG.random(rows) < 0.05),
        "bimodal": pa.array(np.concatenate([RNG.normal(-5, 1, rows // 2), RNG.normal(7, 0.5, rows - rows // 2)])),
        "city": pa.array([None if i % 37 == 0 else f"city-{i % 7}" for i in range(rows)], pa.string()),
        "zip": pa.array([f"z{RNG.integers(0, 400)}" for _ in range(rows)], pa.string()),
        "member": pa.array(RNG.random(rows) < 0.3),
        "joined": pa.array([datetime.datetime(2020, 1, 1) + datetime.timedelta(hours=int(h))
                            for h in RNG.integers(0, 20000, rows)], pa.timestamp("s")),
        "customer": pa.array([f"cust-{i:06d}" for i in range(rows)]),
    })


def test_encode_decode_round_trip_is_lossless():
    table = _mixed_table()
    kinds = infer_kinds(table)
    assert kinds == {"age": "numeric", "income": "numeric", "bimodal": "numeric", "city": "categorical",
                     "zip": "categorical", "member": "boolean", "joined": "datetime", "customer": "id"}
    encoder = TableEncoder.fit(table, kinds, seed=0, max_one_hot=50)
    assert encoder._column("zip").binary and encoder._column("zip").width <= 9  # 400 values in 9 bits
    assert len(encoder._column("bimodal").means) >= 2  # the mixture finds both modes
    decoded = TableEncoder.from_json(encoder.to_json()).decode(encoder.encode(table, np.float64))
    for name in ("age", "city", "zip", "member", "joined"):
        assert decoded[name].to_pylist() == table[name].to_pylist(), name
    for name in ("income", "bimodal"):
        original, back = table[name].to_numpy(zero_copy_only=False), decoded[name].to_numpy(zero_copy_only=False)
        assert np.array_equal(np.isnan(original), np.isnan(back)), f"{name}: nulls moved"
        assert np.allclose(original[~np.isnan(original)], back[~np.isnan(back)], rtol=1e-5), name
    assert decoded.schema.field("income").type == pa.float64() and decoded["customer"].null_count == 0


def test_training_by_sampling_favours_rare_categories():
    table = pa.table({"kind": ["common"] * 950 + ["rare"] * 50, "x": RNG.normal(size=1000)})
    encoder = TableEncoder.fit(table, infer_kinds(table), seed=0)
    features = torch.tensor(encoder.encode(table))
    rows, cond, columns = condition_batch(features, encoder, log_frequency=True, generator=torch.Generator().manual_seed(0))
    rare_share = cond[:, 1].mean().item()
    # log(1+950) : log(1+50) ≈ 0.64 : 0.36, far above the raw 5 %.
    assert 0.3 < rare_share < 0.42
    assert torch.equal(features[rows][:, 0:2], cond)  # each condition matches its real row


def test_whole_batch_span_ops_match_their_per_span_definition():
    table = _mixed_table(300)
    kinds = {k: v for k, v in infer_kinds(table).items() if k != "customer"}
    encoder = TableEncoder.fit(table.select(list(kinds)), kinds, seed=0, primary="city")
    target = torch.tensor(encoder.encode(table.select(list(kinds))))
    raw = (torch.randn(len(target), encoder.width) * 3).requires_grad_(True)
    sigmas = torch.rand(sum(s.activation == "tanh" for s in encoder.spans)) + 0.05
    expected_rows, expected_loss, offset = [], 0.0, 0
    for span in encoder.spans:
        block, truth = raw[:, span.start:span.start + span.width], target[:, span.start:span.start + span.width]
        if span.activation == "tanh":
            expected_rows.append(torch.tanh(block))
            expected_loss += ((truth - torch.tanh(block)) ** 2 / (2 * sigmas[offset] ** 2)).sum() + torch.log(sigmas[offset]) * len(raw)
            offset += 1
        elif span.activation == "sigmoid":
            expected_rows.append(torch.sigmoid(block))
            expected_loss += torch.nn.functional.binary_cross_entropy_with_logits(block, truth, reduction="sum")
        else:
            expected_rows.append(torch.softmax(block, 1))
            expected_loss += torch.nn.functional.cross_entropy(block, truth.argmax(1), reduction="sum")
    assert {"tanh", "sigmoid", "softmax"} <= {s.activation for s in encoder.spans}
    torch.testing.assert_close(activate(raw, encoder), torch.cat(expected_rows, 1))
    loss = reconstruction_loss(raw, target, encoder, sigmas)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(torch.autograd.grad(loss, raw)[0], torch.autograd.grad(expected_loss, raw)[0])

    _, cond, columns = condition_batch(target, encoder, log_frequency=True, generator=torch.Generator().manual_seed(0))
    expected = sum(torch.nn.functional.cross_entropy(raw[i:i + 1, item.start:item.start + item.size],
                                                     cond[i:i + 1, item.cond_start:item.cond_start + item.size].argmax(1))
                   for i, item in ((i, encoder.discrete[c]) for i, c in enumerate(columns.tolist())))
    torch.testing.assert_close(condition_loss(raw, cond, columns, encoder), expected / len(raw))

    huge = (raw.detach() * 1e4).requires_grad_(True)  # each span's own max keeps exp finite
    sampled = activate(huge, encoder, gumbel_tau=0.2)
    sampled.sum().backward()
    assert torch.isfinite(sampled).all() and torch.isfinite(huge.grad).all()
    assert torch.isfinite(reconstruction_loss(huge, target, encoder, sigmas))


def test_draw_samples_each_span_from_its_probabilities():
    table = _mixed_table(300)
    kinds = {k: v for k, v in infer_kinds(table).items() if k != "customer"}
    encoder = TableEncoder.fit(table.select(list(kinds)), kinds, seed=0, max_one_hot=50)
    rows = 40_000
    logits = torch.randn(1, encoder.width, generator=torch.Generator().manual_seed(1)) * 2
    noise = torch.randn(rows, encoder.width, generator=torch.Generator().manual_seed(2))
    drawn = draw(logits.expand(rows, -1), encoder, noise)
    assert {"tanh", "sigmoid", "softmax"} <= {s.activation for s in encoder.spans}
    for span in encoder.spans:
        block, logit = drawn[:, span.start:span.start + span.width], logits[0, span.start:span.start + span.width]
        if span.activation == "tanh":
            torch.testing.assert_close(block, torch.tanh(logit).expand(rows, -1))
        elif span.activation == "sigmoid":  # code bits: Bernoulli(sigmoid)
            assert set(block.unique().tolist()) <= {0.0, 1.0}
            torch.testing.assert_close(block.mean(0), torch.sigmoid(logit), atol=0.01, rtol=0)
        else:  # one-hots: exactly one category per row, drawn with softmax probabilities
            assert torch.equal(block.sum(1), torch.ones(rows))
            torch.testing.assert_close(block.mean(0), torch.softmax(logit, 0), atol=0.01, rtol=0)
    assert torch.equal(draw(logits.expand(rows, -1), encoder, noise), drawn)  # the noise decides every draw


def test_quality_and_privacy_sanity():
    table = _mixed_table(300)
    kinds = {k: v for k, v in infer_kinds(table).items() if k != "customer"}
    assert quality(table, table, kinds)["quality_score"] == pytest.approx(1.0)
    shuffled = table.set_column(0, "age", pa.array(RNG.permutation(table["age"].to_numpy())))
    assert quality(table, shuffled, kinds)["column_shapes"] == pytest.approx(1.0)  # marginals unchanged
    copies = privacy(table, table.slice(0, 50), table.slice(0, 40), kinds)
    assert copies["exact_copies"] == 40 and copies["dcr_median_synthetic"] == 0.0


def test_table_run_cleans_labels_and_samples_exact_counts(tmp_path, capsys):
    rows = ["age,plan,score,churn"]
    for i in range(300):
        rows.append(f"{20 + i % 50},{'gold' if i % 3 == 0 else 'basic'},{i / 10},{'yes' if i % 4 == 0 else 'no'}")
    rows += ["41,gold,abc,no", "42,basic,inf,yes", "43,gold,1.5,", "20,gold,0.0,yes"]  # bad number, inf, no label, duplicate
    (tmp_path / "churn.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["run", "examples/bank.yaml", "--set", f"source.path={tmp_path / 'churn.csv'}",
                 "--set", "annotate.label_column=churn", "--set", f"publish.to={out}",
                 "--set", f"run_root={tmp_path / 'runs'}", "--set", "synthesize.epochs=2",
                 "--set", "synthesize.conditions={churn: {'yes': 37, 'no': 5}}"]) == 0
    lineage = json.loads((out / "lineage.json").read_text())
    counts = lineage["rows"]
    assert counts["rows_in"] == 304 and counts["rows_rejected"] == 4
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
    assert set(counts["rejected_by_reason"]) == {"clean: not a number", "clean: non-finite number",
                                                 "annotate: missing label", "dedup: duplicate"}
    assert lineage["column_kinds"] == {"age": "numeric", "plan": "categorical", "score": "numeric",
                                       "churn": "categorical"}
    real = load_published(str(out), tmp_path=tmp_path)
    synthetic = load_published(str(out), "synthetic", tmp_path=tmp_path)["train"]
    assert real["train"].features["churn"].names == ["no", "yes"]
    assert real["train"].num_rows + real["test"].num_rows == 300
    labels = synthetic["churn"]
    assert labels.count(1) == 37 and labels.count(0) == 5 and set(synthetic["origin"]) == {"synthetic"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(TABLE_METRICS) <= set(metrics) and 0 <= metrics["quality_score"] <= 1


@pytest.mark.parametrize("overrides, message", [
    (["synthesize.model=cgan"], "synthesize.model: 'cgan' does not generate tables"),
    (["preprocess.ops=[{op: decode}]"], "preprocess.ops: image operators do not apply to a table source"),
    (["synthesize.conditions={a: {x: 1}, b: {y: 2}}"], "synthesize.conditions: give counts for one column"),
])
def test_table_spec_errors(capsys, overrides, message):
    argv = ["validate", "examples/bank.yaml"]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_table_spec_defaults():
    from pipeline.spec import load_spec

    spec = load_spec("examples/bank.yaml", ["synthesize.model=null"])
    assert (spec.source.kind, spec.synthesize.model, spec.preprocess.ops) == ("table", "tvae", [])


@needs_shared
def test_the_bank_example_runs_from_any_current_directory(tmp_path, monkeypatch):
    """Its `source.path` is relative to the example's folder, not to where the user stands."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(ROOT / "examples" / "bank.yaml"), "--set", "source.limit=400",
                 "--set", "synthesize.enabled=false", "--set", "evaluate.gates={}", "--set", "publish.to=here"]) == 0
    lineage = json.loads((tmp_path / "here" / "lineage.json").read_text())  # --set paths: the current directory
    assert lineage["rows"]["rows_in"] == 400 and (tmp_path / "runs" / "bank").is_dir()
    assert lineage["inputs"][0]["url"].endswith("shared/data/bank/bank.csv")

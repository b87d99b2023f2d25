"""Text dedup throughput, agreement and memory, and the text model's training speed.

The input tiles the bundled SMS corpus to `--docs` documents (Parquet files, one `text`
column): copy k > 0 of a message is, at random (seeded), the message itself, or the message
with one edit (a word replaced, a word dropped, two words swapped, a number appended), so
the corpus is mostly exact and near duplicates, like scraped text. Both contenders do the
same work: normalise (datakiln's `normalize` operator), drop empty texts, drop exact
duplicates, then find near duplicates with MinHash-LSH on character 5-grams of the
case-folded text (100 permutations, 20 bands × 5 rows, Jaccard ≥ 0.7 verified on the true
shingle sets) and cluster them, keeping the first document of each cluster.

- `datasketch`: one Python process, `datasketch.MinHash` (permutations made once) and
  `MinHashLSH(params=(20, 5))`; each new document queries the index and is verified against
  each candidate not already in its cluster (union-find), joining every one that passes, so
  the clusters are the connected components of the verified pairs; then it is inserted.
- `datakiln`: the text plug-in's stage (`pipeline.modalities.text`), Ray started before the
  clock: the fused operators and MinHash keys per block in Ray Data, exact dedup on the
  content hashes, near-dedup candidates through a distributed sort of the band keys.

Speed: `--rounds` interleaved rounds (rotated order), medians and the range of the per-round
ratio. Agreement: the share of documents both contenders give the same cluster (the same
kept document). Memory: peak PSS of datakiln's process tree (driver, raylet, workers) at
`--docs` and at `--docs / 10`, from sampled runs that are not timed, one of each size a round
(the peak is a moment, so a single run is noisy): the median and range of the rounds' ratios. Model: tokens/s of
datakiln's Ray Train loop for `textlm` on the SMS corpus against a plain PyTorch loop of the
same model, batches and packed rows inside a Ray Train worker. Last line: one JSON object.

    python benchmarks/text.py [--docs 1000000] [--rounds 3] [--keep DIR] [--no-model]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

from processes import descendants, pss_kib, run_sampled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SMS = os.path.join(ROOT, "..", "shared", "data", "sms_spam", "SMSSpamCollection")
FILES = 16
NGRAM, PERMUTATIONS, BANDS, THRESHOLD = 5, 100, 20, 0.7


def sms_messages() -> list[tuple[str, str]]:
    with open(SMS, encoding="utf-8") as handle:
        return [tuple(line.split("\t", 1)) for line in handle.read().splitlines()[1:]]


def make_input(root: str, docs: int, seed: int = 0) -> None:
    """`docs` documents in FILES Parquet files of equal size (a complete folder is reused)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(os.path.join(root, "complete")):
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    messages = [text for _, text in sms_messages()]
    vocabulary = sorted({w for m in messages for w in m.split()})
    rng = random.Random(seed)
    texts = []
    for i in range(docs):
        text = messages[i % len(messages)]
        words = text.split()
        if i >= len(messages) and rng.random() < 0.6 and len(words) > 2:
            edit = rng.randrange(4)
            at = rng.randrange(len(words) - 1)
            if edit == 0:
                words[at] = rng.choice(vocabulary)
            elif edit == 1:
                del words[at]
            elif edit == 2:
                words[at], words[at + 1] = words[at + 1], words[at]
            else:
                words.append(str(rng.randrange(10**6)))
            text = " ".join(words)
        texts.append(text)
    per_file = -(-docs // FILES)
    for index in range(FILES):
        part = texts[index * per_file:(index + 1) * per_file]
        pq.write_table(pa.table({"text": pa.array(part, pa.string())}), os.path.join(root, f"docs-{index:05d}.parquet"))
    open(os.path.join(root, "complete"), "w").close()


def _doc_index(refs: list[str], per_file: int) -> np.ndarray:
    """`docs-00003.parquet#17` → its position in the whole corpus."""
    return np.array([int(r.split("docs-")[1][:5]) * per_file + int(r.rsplit("#", 1)[1]) for r in refs])


def _representatives(kept_of: dict[int, int], docs: int) -> np.ndarray:
    """Each document's cluster: the kept document it (transitively) duplicates, or itself."""
    rep = np.arange(docs)
    for doc in sorted(kept_of):
        target = kept_of[doc]
        while target in kept_of:
            target = kept_of[target]
        rep[doc] = target
    return rep


def run_datakiln(root: str, out: str, docs: int) -> tuple:
    from cluster.runtime import configure_data_context, connect
    from pipeline.modalities import RunContext
    from pipeline.modalities.text import TextModality
    from pipeline.spec import build_spec

    connect(temp_dir=os.path.join(out, "ray"))
    configure_data_context()
    spec = build_spec({"name": "bench-text", "run_root": os.path.join(out, "runs"),
                       "source": {"format": "parquet", "kind": "text", "path": root},
                       "synthesize": {"enabled": False}, "evaluate": {"enabled": False},
                       "preprocess": {"max_reject_fraction": 1.0}}, origin="benchmark")
    began = time.perf_counter()
    modality = TextModality(spec, RunContext("bench", out, "bench", {}))
    staged = modality.stage(modality.collect(), fresh=True)
    seconds = time.perf_counter() - began
    _report(seconds, docs, int((staged.reasons == "").sum()))
    return staged.refs, staged.reasons


def datakiln_clusters(refs: list[str], reasons: list[str], docs: int) -> np.ndarray:
    """Each document's cluster from the stage's reject reasons (`… duplicate of <ref> …`)."""
    index = _doc_index(refs, -(-docs // FILES))
    by_ref = dict(zip(refs, index))
    kept_of = {}
    for doc, reason in zip(index, reasons):
        if " duplicate of " in reason:
            kept_of[int(doc)] = int(by_ref[reason.split(" duplicate of ")[1].split(" (")[0]])
    return _representatives(kept_of, docs)


def _shingle_set(text: str) -> set[str]:
    text = " ".join(text.casefold().split())
    return {text[i:i + NGRAM] for i in range(len(text) - NGRAM + 1)} or {text}


def run_datasketch(root: str, out: str, docs: int) -> np.ndarray:
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    from pipeline.ops import registry

    began = time.perf_counter()
    normalize = registry.build({"op": "normalize"}, "text")
    template = MinHash(num_perm=PERMUTATIONS, seed=1)
    lsh = MinHashLSH(num_perm=PERMUTATIONS, params=(BANDS, PERMUTATIONS // BANDS))
    files = sorted(f for f in os.listdir(root) if f.endswith(".parquet"))
    texts = [t for f in files for t in pq.read_table(os.path.join(root, f))["text"].to_pylist()]
    exact: dict[bytes, int] = {}
    normalised: dict[int, str] = {}
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])  # path halving
            x = parent[x]
        return x

    rep = np.arange(docs)
    for i, raw in enumerate(texts):
        text = normalize.apply(raw, None)
        if not text:
            continue
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest in exact:
            rep[i] = -1 - exact[digest]  # resolved below, once the clusters are final
            continue
        exact[digest] = i
        shingles = _shingle_set(text)
        minhash = MinHash(num_perm=PERMUTATIONS, seed=1, permutations=template.permutations, scheme=template.scheme)
        minhash.update_batch([s.encode() for s in shingles])
        for candidate in sorted(lsh.query(minhash)):
            if root(candidate) == root(i):
                continue
            other = _shingle_set(normalised[candidate])
            if len(shingles & other) / len(shingles | other) >= THRESHOLD:
                low, high = sorted((root(candidate), root(i)))
                parent[high] = low  # the root of a cluster is its first document
        lsh.insert(i, minhash)
        normalised[i] = text
    seconds = time.perf_counter() - began
    for i in range(docs):
        rep[i] = root(-1 - rep[i]) if rep[i] < 0 else root(int(rep[i]))
    _report(seconds, docs, int((rep == np.arange(docs)).sum()))
    return rep


def _report(seconds: float, docs: int, kept: int) -> None:
    print(json.dumps({"seconds": seconds, "docs": docs, "kept": kept}), flush=True)


def _child(contender: str, root: str, out: str, docs: int) -> None:
    """One contender's run; what it found goes to `out` for the parent to compare, so that
    turning it into clusters is not counted in the contender's memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out, exist_ok=True)
    if contender == "datakiln":
        refs, reasons = run_datakiln(root, out, docs)
        pq.write_table(pa.table({"source_ref": refs, "reason": pa.array(reasons, pa.string())}),
                       os.path.join(out, "found.parquet"))
    else:
        np.save(os.path.join(out, "clusters.npy"), run_datasketch(root, out, docs))


def _clusters(contender: str, out: str, docs: int) -> np.ndarray:
    if contender == "datakiln":
        import pyarrow.parquet as pq

        found = pq.read_table(os.path.join(out, "found.parquet"))
        return datakiln_clusters(found["source_ref"].to_pylist(), found["reason"].to_pylist(), docs)
    return np.load(os.path.join(out, "clusters.npy"))


def measure(contender: str, root: str, work: str, docs: int, memory: bool = False) -> dict:
    out = os.path.join(work, f"{contender}-{docs}")
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "RAY_DATA_LOG_LEVEL": "WARNING"}
    peak = 0

    def sample(pid: int) -> None:
        nonlocal peak
        if memory:
            peak = max(peak, sum(pss_kib(p) for p in descendants(pid)))

    lines = run_sampled([sys.executable, __file__, "--child", contender, "--root", root, "--out", out,
                         "--docs", str(docs)], env, sample, contender)
    result = json.loads([line for line in lines if line.startswith('{"seconds"')][-1])
    result.update(docs_per_s=result["docs"] / result["seconds"], peak_pss_mib=peak / 1024,
                  clusters=_clusters(contender, out, docs))
    shutil.rmtree(out, ignore_errors=True)
    shown = f"peak PSS {result['peak_pss_mib']:,.0f} MiB" if memory else (
        f"{result['seconds']:.1f} s = {result['docs_per_s']:,.0f} docs/s, {result['kept']:,} kept")
    print(f"{contender:>11} ({docs:,} docs): {shown}", flush=True)
    return result


def model_speed(epochs: int) -> dict:
    """Tokens/s of datakiln's Ray Train loop and of a plain loop in a Ray Train worker."""
    import ray
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from cluster.runtime import configure_data_context, connect
    from synth.models import get_model
    from synth.models.base import with_defaults
    from synth.models.textlm import TextSchema
    from synth.text import TextTokenizer
    from synth.train import TrainConfig, fit

    rows = sms_messages()
    texts, labels = [t for _, t in rows], np.array([label == "spam" for label, _ in rows], dtype=np.int64)
    model = get_model("textlm")
    config = with_defaults(model, {})
    tokenizer = TextTokenizer.fit(texts, 2, config["vocab_size"], config["max_tokens"])
    packed = tokenizer.pack(tokenizer.documents(texts, labels), 0)
    tokens_per_row = float((packed[:, 1] > 0).sum(axis=1).mean())
    schema = TextSchema(tokenizer.to_json(), 2)
    batch = config["batch_size"]

    def plain(train_config):
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        networks = model.build(schema, config)
        optimizers = model.optimizers(networks, config)
        data = torch.from_numpy(packed)
        rates = []
        for epoch in range(epochs):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
            began = time.perf_counter()
            for start in range(0, len(order), batch):
                model.training_step(networks, *model.inputs({"features": data[order[start:start + batch]]}), optimizers)
            rates.append(len(data) / (time.perf_counter() - began))
        with open(train_config["out"], "w") as handle:
            handle.write(str(float(np.median(rates[1:]))))

    connect()
    configure_data_context()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rows_per_s")
        TorchTrainer(plain, train_loop_config={"out": out}, scaling_config=ray.train.ScalingConfig(num_workers=1),
                     run_config=ray.train.RunConfig(storage_path=folder, name="plain")).fit()
        with open(out) as handle:
            plain_rows = float(handle.read())
        dataset = ray.data.from_numpy(packed).rename_columns({"data": "features"}).materialize()
        train_config = TrainConfig(model="textlm", model_config=config, epochs=epochs, batch_size=batch, seed=0,
                                   attempts_uri=os.path.join(folder, "attempts"))
        result = fit(dataset, schema, train_config, workers=1, use_gpu=False, storage_path=os.path.join(folder, "train"),
                     run_name="text", max_failures=0, model_dir=os.path.join(folder, "model"))
    ray_rows = float(np.median([r["rows_per_s"] for r in result.history][1:]))
    ray.shutdown()
    figures = {"plain_tokens_per_s": round(plain_rows * tokens_per_row, 1),
               "ray_tokens_per_s": round(ray_rows * tokens_per_row, 1),
               "train_ratio": round(ray_rows / plain_rows, 3)}
    print(f"textlm training: plain loop in a Ray Train worker {figures['plain_tokens_per_s']:,.0f} tokens/s, "
          f"datakiln's loop {figures['ray_tokens_per_s']:,.0f} tokens/s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-epochs", type=int, default=4)
    parser.add_argument("--no-model", action="store_true", help="skip the training-speed part")
    parser.add_argument("--keep", help="folder for the generated inputs (reused across runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.root, args.out, args.docs)
        return
    work = args.keep or tempfile.mkdtemp(prefix="datakiln-text-bench-")
    small = args.docs // 10
    roots = {n: os.path.join(work, f"docs-{n}") for n in (args.docs, small)}
    for n, root in roots.items():
        began = time.perf_counter()
        make_input(root, n)
        print(f"input: {n:,} documents under {root} ({time.perf_counter() - began:.0f} s)", flush=True)
    names = ["datasketch", "datakiln"]
    rounds = []
    for index in range(args.rounds):
        order = names[index % 2:] + names[:index % 2]
        print(f"round {index + 1}/{args.rounds}: {', '.join(order)}", flush=True)
        rounds.append({name: measure(name, roots[args.docs], work, args.docs) for name in order})
    ratios = [r["datakiln"]["docs_per_s"] / r["datasketch"]["docs_per_s"] for r in rounds]
    last = rounds[-1]
    agreement = float((last["datakiln"]["clusters"] == last["datasketch"]["clusters"]).mean())
    figures = {"docs": args.docs, "cpus": os.cpu_count(), "rounds": args.rounds,
               "datasketch_docs_per_s": round(float(np.median([r["datasketch"]["docs_per_s"] for r in rounds])), 1),
               "datakiln_docs_per_s": round(float(np.median([r["datakiln"]["docs_per_s"] for r in rounds])), 1),
               "speedup_vs_datasketch": round(float(np.median(ratios)), 3),
               "speedup_vs_datasketch_range": [round(min(ratios), 3), round(max(ratios), 3)],
               "cluster_agreement": round(agreement, 4),
               "kept": {name: last[name]["kept"] for name in names}}
    print(f"cluster agreement {agreement:.4f}; memory: {args.rounds} sampled rounds of both sizes", flush=True)
    peaks = [(measure("datakiln", roots[args.docs], work, args.docs, memory=True)["peak_pss_mib"],
              measure("datakiln", roots[small], work, small, memory=True)["peak_pss_mib"]) for _ in range(args.rounds)]
    memory_ratios = [large / tenth for large, tenth in peaks]
    figures.update(peak_pss_mib=round(float(np.median([p[0] for p in peaks])), 1),
                   peak_pss_mib_tenth=round(float(np.median([p[1] for p in peaks])), 1),
                   memory_ratio=round(float(np.median(memory_ratios)), 3),
                   memory_ratio_range=[round(min(memory_ratios), 3), round(max(memory_ratios), 3)])
    if not args.no_model:
        figures.update(model_speed(args.model_epochs))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

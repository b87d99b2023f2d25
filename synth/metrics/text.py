"""Synthetic text against real text: utility, fidelity, diversity, memorisation, lengths.

- **Utility**: a fixed TF-IDF (word 1–2-grams + character 2–5-grams) + logistic regression
  recipe trained on synthetic texts (TSTR) or real train texts (TRTR), tested on the real
  test split: accuracy, macro-F1, F1 per class.
- **Fidelity** on a fixed embedding fitted on the real train split (TF-IDF → truncated SVD →
  unit length): Fréchet distance, precision / recall / density / coverage, MAUVE
  (`mauve-text` on these features), each with its floor: the same metric for real train
  against real test (what two real samples score).
- **Diversity**: distinct-n (unique n-grams over all n-grams) and self-BLEU (`sacrebleu`).
- **Memorisation**: exact copies of a training text, near copies (the dedup MinHash and
  threshold), and the longest word n-gram a text shares with any training text.
- **Lengths**: the Kolmogorov–Smirnov distance between word-count distributions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from synth.metrics.fid import fid
from synth.metrics.prdc import prdc
from synth.minhash import MinHashSettings, NearCopyIndex, batch_shingles, shingle_text

EMBEDDING_DIMS = 64
SELF_BLEU_TEXTS = 200
"""Texts scored (each against the others of a pool this size), so self-BLEU costs the same on any corpus."""
MAUVE_POINTS_PER_BUCKET = 40
"""MAUVE quantises both feature sets with k-means; faiss wants ~40 points per centroid."""


def fixed_text_classifier(seed: int):
    """The one classifier recipe behind TSTR / TRTR and text pseudo-labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1),
                          TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2))
    return make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000, random_state=seed))


def utility(train: tuple[list[str], np.ndarray], test: tuple[list[str], np.ndarray],
            synthetic: tuple[list[str], np.ndarray], class_names: list[str], seed: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    metrics: dict[str, float] = {}
    for name, (texts, labels) in (("tstr", synthetic), ("trtr", train)):
        if len(set(labels.tolist())) < 2:
            continue
        predicted = fixed_text_classifier(seed).fit(texts, labels).predict(test[0])
        metrics[f"{name}_accuracy"] = float(accuracy_score(test[1], predicted))
        metrics[f"{name}_f1"] = float(f1_score(test[1], predicted, average="macro"))
        per_class = f1_score(test[1], predicted, average=None, labels=list(range(len(class_names))), zero_division=0)
        metrics.update({f"{name}_f1_{c}": float(v) for c, v in zip(class_names, per_class)})
    if "tstr_f1" in metrics and metrics.get("trtr_f1"):
        metrics["tstr_ratio"] = metrics["tstr_f1"] / metrics["trtr_f1"]
    return metrics


class TextEmbedding:
    """TF-IDF (word 1–2-grams) → truncated SVD → unit vectors, fitted on the real train split
    (and so the same for every model compared on it)."""

    def __init__(self, texts: list[str], seed: int, dims: int = EMBEDDING_DIMS):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=50_000)
        matrix = self.tfidf.fit_transform(texts)
        self.svd = TruncatedSVD(n_components=max(2, min(dims, matrix.shape[1] - 1)), random_state=seed).fit(matrix)

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = self.svd.transform(self.tfidf.transform(texts))
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def mauve_score(p: np.ndarray, q: np.ndarray, seed: int) -> float:
    import mauve

    buckets = max(2, min(100, (len(p) + len(q)) // MAUVE_POINTS_PER_BUCKET))
    return float(mauve.compute_mauve(p_features=p, q_features=q, num_buckets=buckets, verbose=False, seed=seed).mauve)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all word n-grams."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def self_bleu(texts: list[str], seed: int) -> float:
    """Mean sentence BLEU of texts against the others of a seeded pool (higher: less diverse)."""
    from sacrebleu.metrics import BLEU

    pool = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:SELF_BLEU_TEXTS]]
    if len(pool) < 2:
        return 0.0
    bleu = BLEU(effective_order=True)
    return float(np.mean([bleu.sentence_score(text, pool[:i] + pool[i + 1:]).score / 100
                          for i, text in enumerate(pool)]))


def longest_shared_ngram(texts: list[str], reference: list[str]) -> np.ndarray:
    """For each text, the longest run of words (case-folded) that also occurs in some
    reference text: found by growing n while any text still shares an n-gram."""
    def words(items):
        return [shingle_text(t).split() for t in items]

    text_words, reference_words = words(texts), words(reference)
    longest = np.zeros(len(texts), dtype=np.int64)
    alive = np.arange(len(texts))
    n = 1
    while len(alive):
        ref = [" ".join(w) for w in reference_words if len(w) >= n]
        candidates = alive[[len(text_words[i]) >= n for i in alive]]
        if not ref or not len(candidates):
            break
        known = np.unique(batch_shingles(ref, n, "word")[0])
        hashes, counts = batch_shingles([" ".join(text_words[i]) for i in candidates], n, "word")
        hit = np.isin(hashes, known)
        shares = np.add.reduceat(hit, np.cumsum(counts) - counts) > 0 if len(hashes) else np.zeros(0, dtype=bool)
        longest[candidates[shares]] = n
        alive = candidates[shares]
        n += 1
    return longest


def length_ks(a: list[str], b: list[str]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp([len(t.split()) for t in a], [len(t.split()) for t in b]).statistic)


def top_ngrams(texts: list[str], n: int, k: int) -> list[tuple[str, int]]:
    """The `k` most frequent word n-grams (case-folded), with their counts."""
    counts = Counter(" ".join(words[i:i + n]) for words in (shingle_text(t).split() for t in texts)
                     for i in range(len(words) - n + 1))
    return counts.most_common(k)


def evaluate_text(train: tuple[list[str], np.ndarray], test: tuple[list[str], np.ndarray],
                  synthetic: tuple[list[str], np.ndarray], class_names: list[str], near: dict[str, Any],
                  seed: int, k: int = 3, step=lambda name: None) -> dict[str, Any]:
    """Every text metric, keys as in `metrics.json`. `near`: the MinHash settings of the
    spec's near-dedup (what counts as a near copy)."""
    metrics: dict[str, Any] = {}
    step("utility (TSTR / TRTR)")
    metrics.update(utility(train, test, synthetic, class_names, seed))
    step("fidelity (embedding, Fréchet, PRDC, MAUVE)")
    embed = TextEmbedding(train[0], seed)
    real_train, real_test, fake = embed(train[0]), embed(test[0]), embed(synthetic[0])
    metrics["frechet"] = fid(real_test, fake)
    metrics["frechet_floor"] = fid(real_test, real_train)
    scores = prdc(real_test, fake, k)
    floors = prdc(real_test, real_train, k)
    metrics.update(scores)
    metrics.update({f"{name}_floor": value for name, value in floors.items()})
    metrics["mauve"] = mauve_score(real_test, fake, seed)
    metrics["mauve_floor"] = mauve_score(real_test, real_train, seed)
    step("diversity")
    for n in (1, 2):
        metrics[f"distinct_{n}"] = distinct_n(synthetic[0], n)
        metrics[f"distinct_{n}_real"] = distinct_n(train[0], n)
    metrics["self_bleu"] = self_bleu(synthetic[0], seed)
    metrics["self_bleu_real"] = self_bleu(train[0], seed)
    step("memorisation")
    exact, best = NearCopyIndex(train[0], MinHashSettings(**near)).nearest(synthetic[0])
    metrics["exact_copies"] = int(exact.sum())
    metrics["near_copies"] = int(((best >= near["threshold"]) & ~exact).sum())
    longest = longest_shared_ngram(synthetic[0], train[0])
    floor = longest_shared_ngram(test[0], train[0])
    metrics["longest_shared_ngram_mean"] = float(longest.mean()) if len(longest) else 0.0
    metrics["longest_shared_ngram_max"] = int(longest.max()) if len(longest) else 0
    metrics["longest_shared_ngram_mean_floor"] = float(floor.mean()) if len(floor) else 0.0
    step("lengths")
    metrics["length_ks"] = length_ks(synthetic[0], test[0])
    metrics["length_ks_floor"] = length_ks(train[0], test[0])
    return metrics

"""MinHash over character or word n-gram shingles, LSH band keys, and true Jaccard: the
near-duplicate machinery that text dedup (`pipeline.ops.text`), the sampler's copy check and
the memorisation metric share."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the 64 output bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shingle_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _codes(texts: list[str], unit: str) -> tuple[np.ndarray, np.ndarray]:
    """The units shingles are made of, for every document at once: code points (the whole
    batch encoded in one call), or a CRC-32 per word; and how many each document has."""
    prepared = [shingle_text(t) for t in texts]
    if unit == "char":
        lengths = np.fromiter(map(len, prepared), dtype=np.int64, count=len(prepared))
        joined = "".join(prepared).encode("utf-32-le", errors="surrogatepass")
        return np.frombuffer(joined, dtype=np.uint32).astype(np.uint64), lengths
    words = [t.split() for t in prepared]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return np.fromiter((zlib.crc32(w.encode("utf-8", errors="surrogatepass")) for doc in words for w in doc),
                       dtype=np.uint64, count=int(lengths.sum())), lengths


def batch_shingles(texts: list[str], ngram: int, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every document's n-gram shingles, concatenated, and the number per
    document (a document shorter than n is one shingle; an empty one has none). One
    polynomial rolling hash over the whole batch, wrapping mod 2^64: deterministic on every
    machine (no salted `hash()`), and no per-document numpy call."""
    codes, lengths = _codes(texts, unit)
    if not lengths.sum():
        return np.zeros(0, dtype=np.uint64), np.zeros(len(texts), dtype=np.int64)
    codes = np.concatenate([codes, np.zeros(ngram, dtype=np.uint64)])
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    short = np.flatnonzero((lengths > 0) & (lengths < ngram))
    hashes = np.zeros(total, dtype=np.uint64)
    short_hashes = np.zeros(len(short), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):  # hashes[j] = poly(codes[j : j + k + 1])
            hashes = hashes * np.uint64(0x100000001B3) + codes[k:k + total] + np.uint64(1)
            ends_here = lengths[short] == k + 1
            short_hashes[ends_here] = hashes[starts[short[ends_here]]]
    hashes = _mix(hashes + np.uint64(ngram))
    doc = np.repeat(np.arange(len(texts)), lengths)
    valid = np.arange(total) + ngram <= (starts + lengths)[doc]  # window inside its document
    if len(short):
        hashes[starts[short]] = _mix(short_hashes + lengths[short].astype(np.uint64))
        valid[starts[short]] = True
    counts = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    return hashes[valid], counts


def shingles(text: str, ngram: int, unit: str) -> np.ndarray:
    """The 64-bit shingle hashes of one document (see `batch_shingles`)."""
    return batch_shingles([text], ngram, unit)[0]


SHINGLES_PER_CHUNK = 1 << 18
"""Shingles hashed under all permutations at once (bounds the scratch memory to ~16 MiB)."""


@dataclass(frozen=True)
class MinHashSettings:
    ngram: int = 5
    unit: str = "char"
    """`char` or `word` n-grams."""
    permutations: int = 100
    bands: int = 20
    threshold: float = 0.7
    seed: int = 1

    @property
    def rows(self) -> int:
        return self.permutations // self.bands


class MinHasher:
    """MinHash signatures (one 32-bit minimum per permutation) and LSH band keys."""

    def __init__(self, params: MinHashSettings):
        self.params = params
        rng = np.random.default_rng(params.seed)
        self.a = rng.integers(1, 2**63, params.permutations, dtype=np.uint64) | np.uint64(1)  # odd: a bijection
        self.b = rng.integers(0, 2**63, params.permutations, dtype=np.uint64)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(documents, permutations): per permutation x → (a·x + b) mod 2^64, the top 32 bits
        of the smallest over each document's shingles (all ones for an empty document)."""
        p = self.params
        hashes, counts = batch_shingles(texts, p.ngram, p.unit)
        out = np.full((len(texts), p.permutations), 2**32 - 1, dtype=np.uint64)
        offsets = np.cumsum(counts) - counts
        docs = np.flatnonzero(counts)
        begin = 0
        while begin < len(docs):  # groups of whole documents, about SHINGLES_PER_CHUNK shingles each
            end = int(np.searchsorted(offsets[docs], offsets[docs[begin]] + SHINGLES_PER_CHUNK, side="right"))
            end = max(end, begin + 1)
            group = docs[begin:end]
            lo, hi = offsets[group[0]], offsets[group[-1]] + counts[group[-1]]
            chunk = hashes[lo:hi]
            step = max(1, SHINGLES_PER_CHUNK // max(1, len(chunk)) * 8)
            for first in range(0, p.permutations, step):
                a, b = self.a[first:first + step, None], self.b[first:first + step, None]
                with np.errstate(over="ignore"):
                    permuted = (chunk[None, :] * a + b) >> np.uint64(32)
                out[group, first:first + step] = np.minimum.reduceat(permuted, offsets[group] - lo, axis=1).T
            begin = end
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(documents, bands): a 64-bit hash of each band's rows of minima and the band's index."""
        p = self.params
        values = signatures.reshape(len(signatures), p.bands, p.rows)
        keys = np.broadcast_to(np.arange(p.bands, dtype=np.uint64), values.shape[:2]).copy()
        with np.errstate(over="ignore"):
            for r in range(p.rows):
                keys = _mix(keys * np.uint64(0x9E3779B97F4A7C15) + values[:, :, r])
        return keys

    def keys(self, texts: list[str]) -> np.ndarray:
        """(documents, bands) LSH keys."""
        return self.band_keys(self.signatures(texts))


def jaccard(a: str, b: str, ngram: int, unit: str) -> float:
    """True Jaccard similarity of two documents' shingle sets."""
    x, y = np.unique(shingles(a, ngram, unit)), np.unique(shingles(b, ngram, unit))
    if len(x) == 0 and len(y) == 0:
        return 1.0
    common = len(np.intersect1d(x, y, assume_unique=True))
    return common / (len(x) + len(y) - common)


LOW_BITS = np.uint64((1 << 44) - 1)
"""`pair_jaccard` keys a shingle by its pair (high 20 bits) and its hash's low 44 bits: two
different shingles of one pair share them with probability ~n²/2^45 (1e-9 for 200 shingles)."""


def pair_jaccard(texts: list[str], a: np.ndarray, b: np.ndarray, ngram: int, unit: str) -> np.ndarray:
    """True Jaccard of the shingle sets of `texts[a[i]]` and `texts[b[i]]` for every pair, each
    document shingled once however many pairs it is in, and every intersection counted by
    one sort over the whole batch (at most 2^20 pairs)."""
    docs = np.unique(np.concatenate([a, b]))
    hashes, counts = batch_shingles([texts[d] for d in docs], ngram, unit)
    owner = np.repeat(np.arange(len(docs)), counts)
    keyed = np.sort((owner.astype(np.uint64) << np.uint64(44)) | (hashes & LOW_BITS))  # sets: sorted, per document
    keyed = keyed[np.r_[True, keyed[1:] != keyed[:-1]]] if len(keyed) else keyed
    owner = (keyed >> np.uint64(44)).astype(np.int64)
    low = keyed & LOW_BITS
    sizes = np.bincount(owner, minlength=len(docs))
    starts = np.cumsum(sizes) - sizes

    def members(index: np.ndarray) -> np.ndarray:
        """The shingles of document `index[p]` keyed by pair p, for every pair."""
        lengths = sizes[index]
        offsets = np.repeat(starts[index] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        return (np.repeat(np.arange(len(index), dtype=np.uint64), lengths) << np.uint64(44)) | low[offsets]

    first, second = np.searchsorted(docs, a), np.searchsorted(docs, b)
    both = np.sort(np.concatenate([members(first), members(second)]))
    shared = both[1:][both[1:] == both[:-1]]  # a shingle in both sets of its pair
    common = np.bincount((shared >> np.uint64(44)).astype(np.int64), minlength=len(a))
    union = sizes[first] + sizes[second] - common
    return np.where(union > 0, common / np.maximum(union, 1), 1.0)


class NearCopyIndex:
    """An LSH index of reference texts (the train split) that says which texts copy one of
    them: the same text up to case and whitespace, or a near duplicate (a shared band, then a
    true Jaccard of at least the threshold)."""

    def __init__(self, texts: list[str], params: MinHashSettings):
        self.texts, self.params, self.hasher = texts, params, MinHasher(params)
        self.exact = {shingle_text(t): i for i, t in enumerate(texts)}
        self.buckets: dict[int, list[int]] = {}
        for row, keys in enumerate(self.hasher.keys(texts) if texts else []):
            for key in keys.tolist():
                self.buckets.setdefault(key, []).append(row)

    def nearest(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text: whether it is an exact copy, and the highest Jaccard to a reference text
        that shares a band with it (0 when none does)."""
        exact = np.array([shingle_text(t) in self.exact for t in texts], dtype=bool)
        best = np.zeros(len(texts))
        p = self.params
        for i, keys in enumerate(self.hasher.keys(texts) if texts else []):
            candidates = {row for key in keys.tolist() for row in self.buckets.get(key, ())}
            for row in candidates:
                best[i] = max(best[i], jaccard(texts[i], self.texts[row], p.ngram, p.unit))
        best[exact] = 1.0
        return exact, best

    def copies(self, texts: list[str]) -> np.ndarray:
        """Whether each text is an exact or near copy of a reference text."""
        exact, best = self.nearest(texts)
        return exact | (best >= self.params.threshold)

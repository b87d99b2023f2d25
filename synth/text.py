"""Text as token ids for the language model: a byte-level BPE tokenizer trained locally by
Hugging Face `tokenizers` on the train split, with the class as a prefix token.

A document is `[<class_k>, t1, …, tn, <eos>]`; the model learns every next token after the
class token, so sampling starts from `<class_k>` alone. For training, documents are packed
into rows of `max_tokens` with a segment id per position (0 = padding): a row holds several
short texts (an SMS is ~30 tokens), attention stays inside each segment and positions restart
at each, so no compute goes to padding.
"""

from __future__ import annotations

import json

import numpy as np

PAD, EOS = "<pad>", "<eos>"


def class_token(index: int) -> str:
    return f"<class_{index}>"


class TextTokenizer:
    """A trained BPE tokenizer (`tokenizers.Tokenizer`) and the fixed row length."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.pad_id, self.eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)

    @classmethod
    def fit(cls, texts: list[str], num_classes: int, vocab_size: int, max_tokens: int,
            length_quantile: float = 0.99) -> TextTokenizer:
        """Train byte-level BPE on `texts` (deterministic: the same texts give the same
        merges); rows are as long as the `length_quantile` of the texts' token counts plus the
        class and end tokens, at most `max_tokens`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        special = [PAD, EOS] + [class_token(k) for k in range(num_classes)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)] or [1]
        rows = int(min(max_tokens, np.ceil(np.quantile(lengths, length_quantile)) + 2))
        return cls(tokenizer, max(rows, 4))

    def to_json(self) -> str:
        return json.dumps({"tokenizer": self.tokenizer.to_str(), "max_tokens": self.max_tokens})

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        from tokenizers import Tokenizer

        data = json.loads(text)
        return cls(Tokenizer.from_str(data["tokenizer"]), data["max_tokens"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def class_id(self, index: int) -> int:
        return self.tokenizer.token_to_id(class_token(index))

    def documents(self, texts: list[str], labels: np.ndarray) -> list[list[int]]:
        """Each text as class token, its tokens (cut to fit a row), end token."""
        return [[self.class_id(int(label)), *encoding.ids[:self.max_tokens - 2], self.eos_id]
                for encoding, label in zip(self.tokenizer.encode_batch(texts), labels)]

    def pack(self, documents: list[list[int]], seed: int) -> np.ndarray:
        """(rows, 2, max_tokens) int32: token ids and segment ids (1, 2, … per document in the
        row, 0 for padding). Documents go in a seeded random order, each into the current row
        while it fits, else into a new one."""
        order = np.random.default_rng(seed).permutation(len(documents))
        rows, row, used = [], [], 0
        for index in order:
            document = documents[index]
            if used + len(document) > self.max_tokens:
                rows.append(row)
                row, used = [], 0
            row.append(document)
            used += len(document)
        if row:
            rows.append(row)
        out = np.zeros((len(rows), 2, self.max_tokens), dtype=np.int32)
        out[:, 0] = self.pad_id
        for i, row in enumerate(rows):
            at = 0
            for segment, document in enumerate(row, start=1):
                out[i, 0, at:at + len(document)] = document
                out[i, 1, at:at + len(document)] = segment
                at += len(document)
        return out

    def decode(self, rows: np.ndarray) -> list[str]:
        """Token rows (after the class token) → texts, up to the first end or padding token."""
        texts = []
        for row in rows.tolist():
            ids = []
            for token in row:
                if token in (self.eos_id, self.pad_id):
                    break
                ids.append(token)
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return texts

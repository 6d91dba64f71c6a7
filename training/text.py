"""Tokenizers for the three SD3 text encoders, built from the caption corpus.

- CLIP (used twice, as ``tokenizer`` and ``tokenizer_2``): a byte-level BPE trained with the
  ``tokenizers`` library using exactly CLIP's normaliser and pre-tokeniser, written in CLIP's
  layout (256 byte symbols, the same with ``</w>``, merged tokens, then the two specials)
  as ``vocab.json`` / ``merges.txt``. Every byte has a symbol, so no input maps to the unknown
  token (which for CLIP is ``<|endoftext|>`` and would move the pooled position).
- T5 (``tokenizer_3``): a Unigram model over whole words with single-character fallback.
  Its log-probabilities are counted directly from the corpus: ``tokenizers``'
  ``UnigramTrainer`` splits this tiny, repetitive corpus mostly into single characters.
  Like the real T5 tokenizer it is case-sensitive; the CLIP tokenizer lowercases.

The corpus is the seen combinations only; held-out pairs use the same words, so their
captions tokenize exactly as well.
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, T5TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_MAX_LENGTH = 77  # fixed by the pipeline and the CLIP position embeddings
# The pipeline pads T5 input to ``max_sequence_length`` (default 256) whatever this says;
# it is set so that tokenizer warnings and truncation agree with that default.
T5_MAX_LENGTH = 256
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
# Same split pattern as transformers' CLIPTokenizer.
CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def train_clip_bpe(corpus: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE merges learned on the corpus, and a vocabulary in CLIP's layout."""
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # vocab_size is only a ceiling: training stops when every corpus word is one token.
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        show_progress=False,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    merges = [(a, b) for a, b in json.loads(tok.to_str())["model"]["merges"]]

    symbols = list(bytes_to_unicode().values())  # CLIP's byte-level alphabet
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def build_clip_tokenizer(corpus: Sequence[str]) -> CLIPTokenizer:
    vocab, merges = train_clip_bpe(corpus)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )


def unigram_vocab(corpus: Sequence[str]) -> list[tuple[str, float]]:
    """Unigram pieces with log-probability scores: specials, whole words, then characters."""
    words = Counter("▁" + w for line in corpus for w in line.split())
    total = sum(words.values())
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in T5_SPECIALS]
    # Most frequent first, ties by spelling, so the ids do not depend on hash order.
    for word, count in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        pieces.append((word, math.log(count / total)))
    # Fallback pieces, scored well below any word so that Viterbi prefers whole words.
    floor = min(score for _, score in pieces[len(T5_SPECIALS) :]) - 10.0
    known = {p for p, _ in pieces}
    for ch in "▁" + string.ascii_letters + string.digits + string.punctuation:
        if ch not in known:
            pieces.append((ch, floor))
    return pieces


def build_t5_tokenizer(corpus: Sequence[str]) -> T5TokenizerFast:
    return T5TokenizerFast(vocab=unigram_vocab(corpus), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def save_clip_files(tokenizer: CLIPTokenizer, directory: Path) -> None:
    """Also write CLIP's classic ``vocab.json`` / ``merges.txt`` next to ``tokenizer.json``."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in model["merges"])]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")

"""How well a WordPiece vocabulary fits a text: pieces per word, words split, [UNK] rate, vocabulary never used.

    python scripts/vocab_quality.py --tokenizer runs/tokenizer --text held-out.txt
Prints one JSON object. "Words" are the pre-tokenizer's words (whitespace and punctuation split), after the
tokenizer's own normalization; special tokens are not added. pieces_per_word = tokens / words;
words_split_share = words encoded as more than one piece; unk_rate = [UNK] tokens / tokens (unk_word_rate: per
word); vocab_never_used_share = entries (special tokens aside) that no word of the text used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertcli.corpus import iter_texts  # noqa: E402
from bertcli.vocab import load_tokenizer  # noqa: E402

BATCH = 4096


def measure(tokenizer_dir: str, text_paths: list[str], max_sentences: int = 0) -> dict:
    """The quality figures of one tokenizer on one text (streamed in batches)."""
    loaded = load_tokenizer(tokenizer_dir)
    tok = loaded.tokenizer
    unk_id = loaded.special_ids["unk"]
    special = set(loaded.special_ids.values())
    vocab_size = tok.get_vocab_size()
    used = bytearray(vocab_size)
    sentences = words = tokens = split_words = unk_tokens = 0

    def consume(batch: list[str]) -> None:
        nonlocal words, tokens, split_words, unk_tokens
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            pieces_of_word: dict[int, int] = {}
            for wid in enc.word_ids:
                if wid is not None:
                    pieces_of_word[wid] = pieces_of_word.get(wid, 0) + 1
            words += len(pieces_of_word)
            split_words += sum(1 for n in pieces_of_word.values() if n > 1)
            tokens += len(enc.ids)
            for i in enc.ids:
                used[i] = 1
                if i == unk_id:
                    unk_tokens += 1

    batch: list[str] = []
    for sentence in iter_texts(text_paths):
        batch.append(sentence)
        sentences += 1
        if len(batch) >= BATCH:
            consume(batch)
            batch = []
        if max_sentences and sentences >= max_sentences:
            break
    if batch:
        consume(batch)
    learnable = [i for i in range(vocab_size) if i not in special]
    never_used = sum(1 for i in learnable if not used[i])
    return {
        "tokenizer": str(tokenizer_dir),
        "text": [str(p) for p in text_paths],
        "vocab_size": vocab_size,
        "sentences": sentences,
        "words": words,
        "tokens": tokens,
        "pieces_per_word": round(tokens / max(words, 1), 4),
        "words_split_share": round(split_words / max(words, 1), 4),
        "unk_rate": round(unk_tokens / max(tokens, 1), 6),
        # Greedy WordPiece encodes a word it cannot match as one [UNK]: the share of words lost.
        "unk_word_rate": round(unk_tokens / max(words, 1), 6),
        "vocab_never_used_share": round(never_used / max(len(learnable), 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="tokenizer directory (bert train-vocab output)")
    ap.add_argument("--text", required=True, nargs="+", help="text file(s), sentence-per-line")
    ap.add_argument("--max-sentences", type=int, default=0, help="stop after this many sentences (0: all)")
    args = ap.parse_args()
    print(json.dumps(measure(args.tokenizer, args.text, args.max_sentences)))


if __name__ == "__main__":
    main()

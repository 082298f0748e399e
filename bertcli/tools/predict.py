"""Use a trained BERT: NSP prediction, mask filling, evaluation on an artifact, contextual embeddings."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from bertcli.errors import ArtifactError, InputError, warn
from bertcli.masking import IGNORE_INDEX
from bertcli.model_dir import LoadedModel
from bertcli.textio import check_unicode, parse_json_line, text_lines
from bertcli.vocab import count_unknown, warn_if_mostly_unknown

if TYPE_CHECKING:
    from bertcli.vocab import LoadedTokenizer

# ---------------------------------------------------------------- encoding


# Characters of one text that are read: far more than a model's positions can hold (a piece covers a few
# characters), so nothing the model could see is lost, while a megabyte pasted by mistake costs nothing.
CHARS_PER_POSITION = 128


def encode_texts(
    loaded: LoadedModel,
    texts: Sequence[str],
    seconds: Sequence[str] | None = None,
    what: Callable[[int], str] = lambda i: f"text {i + 1}",
    offsets: bool = False,
    report: Callable[[str], None] = warn,
) -> dict:
    """Tokenize a batch, truncating (with a warning naming the item, given to `report`) what exceeds the model's
    positions.

    Pairs are encoded one text at a time and cut here (longest first), not by the tokenizer: its pair truncation
    takes time and memory quadratic in the length (2 × 100k characters took 45 s and 6.5 GB).
    """
    tok = loaded.tokenizer
    limit = loaded.max_length * CHARS_PER_POSITION

    def cut(items: Sequence[str], which: str) -> list[str]:
        out = []
        for i, text in enumerate(items):
            check_unicode(text, f"{what(i)}{which}")
            if len(text) > limit:
                report(f"{what(i)}{which} has {len(text):,} characters; only the first {limit:,} are read")
                text = text[:limit]
            out.append(text)
        return out

    firsts = cut(texts, "")
    if seconds is not None:
        return _encode_pairs(loaded, firsts, cut(seconds, " (second text)"), what, offsets, report)
    kwargs: dict[str, Any] = {"add_special_tokens": True, "return_offsets_mapping": offsets}
    full = tok(firsts, **kwargs)
    too_long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > loaded.max_length]
    if not too_long:
        return full
    for i in too_long:
        report(f"{what(i)} has {len(full['input_ids'][i])} tokens, more than the model's {loaded.max_length} "
               f"positions; truncated to {loaded.max_length}")
    return tok(firsts, truncation=True, max_length=loaded.max_length, **kwargs)


def _encode_pairs(
    loaded: LoadedModel,
    firsts: list[str],
    seconds: list[str],
    what: Callable[[int], str],
    offsets: bool,
    report: Callable[[str], None],
) -> dict:
    """[CLS] A [SEP] B [SEP] with token types 0 then 1, the longer segment cut first to fit the positions."""
    tok = loaded.tokenizer
    a = tok(firsts, add_special_tokens=False, return_offsets_mapping=offsets)
    b = tok(seconds, add_special_tokens=False, return_offsets_mapping=offsets)
    budget = loaded.max_length - 3  # [CLS] and two [SEP]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    if offsets:
        out["offset_mapping"] = []
    for i, (ids_a, ids_b) in enumerate(zip(a["input_ids"], b["input_ids"])):
        for ids, which in ((ids_a, "first"), (ids_b, "second")):
            if not ids:  # only characters the normalizer drops (zero-width, control): an empty segment
                raise InputError(f"{what(i)}: the {which} text has no tokens",
                                 hint="give both texts words the model can read")
        keep_a, keep_b = len(ids_a), len(ids_b)
        if keep_a + keep_b > budget:
            report(f"{what(i)} has {keep_a + keep_b + 3} tokens, more than the model's {loaded.max_length} "
                   f"positions; truncated to {loaded.max_length}, the longer text first")
            # longest first: the longer text down to the shorter one's length, then both alike (B the odd piece)
            excess = keep_a + keep_b - budget
            level = min(excess, abs(keep_a - keep_b))
            keep_a, keep_b = (keep_a - level, keep_b) if keep_a > keep_b else (keep_a, keep_b - level)
            excess -= level
            keep_a, keep_b = keep_a - excess // 2, keep_b - (excess - excess // 2)
        out["input_ids"].append([cls, *ids_a[:keep_a], sep, *ids_b[:keep_b], sep])
        out["token_type_ids"].append([0] * (keep_a + 2) + [1] * (keep_b + 1))
        out["attention_mask"].append([1] * (keep_a + keep_b + 3))
        if offsets:
            none = (0, 0)
            out["offset_mapping"].append(
                [none, *a["offset_mapping"][i][:keep_a], none, *b["offset_mapping"][i][:keep_b], none]
            )
    return out


def pad_batch(loaded: LoadedModel, enc: dict) -> dict:
    """Lists of ids → padded tensors on the model's device: input_ids, token_type_ids, attention_mask (B, T)."""
    import torch

    pad_id = loaded.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = 0  # any id works: padded positions are masked out of attention
    rows = enc["input_ids"]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = enc.get("token_type_ids")
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        if types is not None:
            token_type_ids[i, : len(row)] = torch.tensor(types[i], dtype=torch.long)
    return {
        "input_ids": input_ids.to(loaded.device),
        "token_type_ids": token_type_ids.to(loaded.device),
        "attention_mask": attention_mask.to(loaded.device),
    }


# ---------------------------------------------------------------- predict-nsp


def predict_nsp(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 32,
    what: Callable[[int], str] | None = None,
) -> list[dict]:
    """IsNext probability for each (first, second) pair, in input order; label 0 of the NSP head is IsNext (the
    convention of Google's code and transformers)."""
    import torch

    name = what or (lambda i: f"pair {i + 1}")
    # Batches of similar length waste little on padding (character length is a cheap proxy for token length).
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    probs: list[float] = [0.0] * len(pairs)
    unknown = total = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode_texts(loaded, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx], what=lambda k: name(idx[k]))
        batch_unknown, batch_total = count_unknown(enc["input_ids"], loaded.tokenizer)
        unknown, total = unknown + batch_unknown, total + batch_total
        batch = pad_batch(loaded, enc)
        with torch.inference_mode():
            out = loaded.model.bert(**batch)
            logits = loaded.model.cls.seq_relationship(out.pooler_output)  # (B, 2)
            for i, p in zip(idx, torch.softmax(logits.float(), dim=-1)[:, 0].cpu().tolist()):
                probs[i] = p
    warn_if_mostly_unknown(unknown, total, "the text" if len(pairs) == 1 else "the pairs", loaded.path,
                           (text for pair in pairs for text in pair))
    return [
        {"first": a, "second": b, "is_next_probability": p, "label": "IsNext" if p >= 0.5 else "NotNext"}
        for (a, b), p in zip(pairs, probs)
    ]


def read_pairs_file(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """(line number, first, second) from a TSV (first<TAB>second) or JSONL ({"first":…, "second":…}) file, streamed.

    A TSV's first line may be the header `first<TAB>second`: it names the columns, so it is not a pair.
    """
    p = Path(path)
    seen_a_line = False
    as_json: bool | None = {".jsonl": True, ".json": True, ".tsv": False, ".txt": False}.get(p.suffix)
    for line_no, line in text_lines(p, "pairs file", "pass --input FILE with one pair a line"):
        if as_json is None:
            as_json = line.lstrip().startswith("{")
        if as_json:
            obj = parse_json_line(p, line_no, line, hint='each line must be {"first": "…", "second": "…"}')
            if not isinstance(obj, dict) or not isinstance(obj.get("first"), str) or not isinstance(
                obj.get("second"), str
            ):
                raise InputError(
                    f"{p}:{line_no}: expected string fields \"first\" and \"second\"",
                    hint='each line must be {"first": "…", "second": "…"}',
                )
            first, second = obj["first"], obj["second"]
        else:
            parts = line.split("\t")
            if len(parts) != 2:
                raise InputError(
                    f"{p}:{line_no}: expected 2 tab-separated columns (first<TAB>second), found {len(parts)}",
                    hint="separate the two sentences with exactly one tab, or use JSONL",
                )
            first, second = parts
            if not seen_a_line:
                seen_a_line = True
                if [x.strip().lower() for x in parts] == ["first", "second"]:
                    continue
        if not first.strip() or not second.strip():
            raise InputError(f"{p}:{line_no}: an empty sentence", hint="both sentences of a pair need text")
        yield line_no, first, second


def _checked_lines(path: Path) -> None:
    """Read the whole pairs file once so a malformed line fails before any output is written."""
    if not any(True for _ in read_pairs_file(path)):
        raise InputError(f"pairs file '{path}' holds no pairs", hint="one pair a line: first<TAB>second, or JSONL")


def predict_nsp_file(loaded: LoadedModel, path: str | Path, batch_size: int = 32) -> Iterator[dict]:
    """Predictions for every pair of a TSV/JSONL file, in order, streamed batch by batch."""
    p = Path(path)
    _checked_lines(p)
    chunk: list[tuple[int, str, str]] = []

    def flush() -> list[dict]:
        lines = [n for n, _, _ in chunk]
        out = predict_nsp(loaded, [(a, b) for _, a, b in chunk], batch_size, what=lambda i: f"{p}:{lines[i]}")
        chunk.clear()
        return out

    for item in read_pairs_file(p):
        chunk.append(item)
        if len(chunk) == batch_size * 16:  # several batches at once, so that they can be sorted by length
            yield from flush()
    if chunk:
        yield from flush()


# ---------------------------------------------------------------- fill-mask


def fill_mask(loaded: LoadedModel, text: str, top_k: int = 5) -> list[dict]:
    """The top_k tokens (special tokens left out) and probabilities for every mask token in the text."""
    import torch

    tok = loaded.tokenizer
    mask_token, mask_id = tok.mask_token, tok.mask_token_id
    if mask_token is None or mask_id is None:
        raise ArtifactError(f"'{loaded.path}': the tokenizer has no mask token, so it cannot fill masks",
                            hint="give the tokenizer its mask token (mask_token in tokenizer_config.json)")
    if top_k < 1:
        raise InputError(f"--top-k {top_k}: expected a value >= 1")
    truncated: list[str] = []  # warned about only once the text is accepted: a refusal is one error, no warning
    enc = encode_texts(loaded, [text], what=lambda i: "the text", report=truncated.append)
    ids = enc["input_ids"][0]
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        if mask_token in text:
            raise InputError(
                f"every {mask_token} in the text lies beyond the model's {loaded.max_length} positions",
                hint="shorten the text before the mask",
            )
        raise InputError(
            f"the text has no {mask_token} token: {text!r}",
            hint=f"write {mask_token} (exactly so) where a word should be predicted, "
            f"e.g. \"The {mask_token} sat on the mat.\"",
        )
    for message in truncated:
        warn(message)
    unknown, total = count_unknown([[t for t in ids if t != mask_id]], tok)
    warn_if_mostly_unknown(unknown, total, "the text", loaded.path, [text])
    beyond = text.count(mask_token) - len(positions)  # the tokenizer matches the mask token as written
    if beyond > 0:
        warn(f"{beyond} of the text's {len(positions) + beyond} {mask_token} tokens lie beyond the model's "
             f"{loaded.max_length} positions and are not filled")
    batch = pad_batch(loaded, enc)
    with torch.inference_mode():
        hidden = loaded.model.bert(**batch).last_hidden_state[0, positions]  # (M, H)
        logits = loaded.model.cls.predictions(hidden).float()  # (M, V)
        # Special tokens are not words: a small model predicts [SEP]/[PAD] often, which helps nobody.
        banned = [i for i in loaded.special_ids if i < logits.shape[-1]]
        logits[:, banned] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        k = min(top_k, probs.shape[-1] - len(banned))
        top_p, top_i = probs.topk(k, dim=-1)
    frame_ids = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    results = []
    for m, pos in enumerate(positions):
        preds = []
        for p, i in zip(top_p[m].tolist(), top_i[m].tolist()):
            filled = list(ids)
            filled[pos] = i
            # The other masks stay masked in `sequence`, as in transformers' fill-mask pipeline.
            preds.append(
                {
                    "token": tok.convert_ids_to_tokens(i),
                    "token_id": i,
                    "probability": p,
                    "sequence": tok.decode([t for t in filled if t not in frame_ids]).strip(),
                }
            )
        results.append({"mask_index": m, "position": pos, "predictions": preds})
    return results


# ---------------------------------------------------------------- evaluate


EVAL_CHUNK_SEQUENCES = 1024
"""`bert evaluate` reads the data in chunks of this many sequences, in artifact order. On a pairs artifact each whole
chunk is masked as one batch by the training collator, seeded by (--seed, chunk number), so the masks depend on
--seed alone: neither --batch-size nor --max-sequences changes them."""


# The most frequent pieces of a corpus (the, of, a …): too easy to be worth asking a model about.
COMMON_PIECES = 20
# Ideographs BERT splits into one word each (handle_chinese_chars): one can be masked without spaces around it.
_CJK_IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
# Characters a shell reads inside double quotes ($ ` \ " and !, history expansion), and the apostrophe, which
# splits a word (didn't) into pieces a [MASK] would cut.
_UNQUOTABLE = set('"`$\\!\'')


def fill_mask_example(corpus: Any, tokenizer_dir: str | Path, max_sentences: int = 1000) -> str | None:
    """A fill-mask prompt in the corpus's own language, one the model has a fair chance to answer: among the first
    sentences, the whole word in one piece (space or sentence edge before it; space, punctuation or edge after it;
    or a single CJK ideograph) that occurs most often in them outside the COMMON_PIECES most frequent ones (the,
    of, …), inside a sentence of 10-30 pieces that starts with a letter and ends like a sentence, replaced by
    [MASK]. Failing that, the first such word (outside the common ones if it can) in a sentence of 6-40 pieces.
    The prompt can be pasted between double quotes in a shell.
    corpus: a config with the corpus keys (input, layout, format, text_field, language), e.g. the pairs stage's.
    None when no sentence qualifies, or the corpus or tokenizer cannot be read now (a suggestion is never worth an
    error after a finished run)."""
    from bertcli.corpus import iter_texts
    from bertcli.errors import BertcliError
    from bertcli.vocab import load_tokenizer

    try:
        loaded = load_tokenizer(tokenizer_dir)
        texts = iter_texts(corpus.input, corpus.layout, corpus.format, corpus.text_field, "replace", corpus.language)
        sentences = [s for _, s in zip(range(max_sentences), texts)]
    except (BertcliError, OSError):
        return None
    mask_token = loaded.tokenizer.id_to_token(loaded.special_ids["mask"])
    special = set(loaded.special_ids.values())
    encodings = [loaded.tokenizer.encode(s, add_special_tokens=False) for s in sentences]
    counts = Counter(i for enc in encodings for i in enc.ids)
    common = {i for i, _ in counts.most_common(COMMON_PIECES)}
    best: tuple[tuple, str] | None = None
    for sentence, enc in zip(sentences, encodings):
        # "-…" would be read as an option; the characters of _UNQUOTABLE break the shell's double quotes
        if sentence.startswith("-") or _UNQUOTABLE & set(sentence) or not 6 <= len(enc.ids) <= 40:
            continue
        sentence_like = 10 <= len(enc.ids) <= 30 and sentence[0].isalpha() and sentence.rstrip()[-1] in ".?。？"
        pieces_of_word = Counter(w for w in enc.word_ids if w is not None)
        for i in range(1, len(enc.ids) - 1):  # context on both sides
            start, end = enc.offsets[i]
            word = sentence[start:end]
            alone = (start == 0 or sentence[start - 1].isspace()) and (
                end == len(sentence) or sentence[end].isspace() or sentence[end] in ",.;:?)")
            if (enc.word_ids[i] is None or pieces_of_word[enc.word_ids[i]] != 1 or not word.isalpha()
                    or enc.ids[i] in special or not (alone or _CJK_IDEOGRAPH.fullmatch(word))):
                continue
            rank = (sentence_like, enc.ids[i] not in common, counts[enc.ids[i]] if sentence_like else 0)
            if best is None or rank > best[0]:  # the first of equals: the order of the corpus decides ties
                best = (rank, sentence[:start] + mask_token + sentence[end:])
    return best[1] if best is not None else None


def model_tokenizer(loaded: LoadedModel) -> LoadedTokenizer:
    """The model's tokenizer read as bertcli reads an artifact's (identity hash, vocabulary size, special ids), so
    that artifacts.check_tokenizer_matches can compare data with it."""
    from bertcli.vocab import load_tokenizer

    if not (loaded.path / "tokenizer.json").is_file():
        raise ArtifactError(
            f"'{loaded.path}' has no tokenizer.json, so `bert evaluate` cannot check that the data was made with "
            "the model's tokenizer",
            hint="save it beside the model: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes one",
        )
    return load_tokenizer(loaded.path)


def evaluate(
    loaded: LoadedModel,
    data_dir: str | Path,
    batch_size: int = 32,
    max_sequences: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """MLM loss, MLM accuracy at the masked positions, perplexity (exp of the loss) and NSP accuracy on a masked
    artifact (its masks), or on a pairs artifact masked here as `bert pretrain` masks one (dynamic masking with its
    default masked_lm_prob, max_predictions_per_seq and whole_word_mask; see EVAL_CHUNK_SEQUENCES for the seeds).

    The numbers come from the training code: its collator, model.pretraining_loss and model.summarize_stats, so they
    equal what `bert pretrain` reports for the same sequences and masks (eval_* in metrics.jsonl, in fp32).
    """
    import torch
    from tqdm import tqdm

    from bertcli.artifacts import check_tokenizer_matches, load_data
    from bertcli.batching import Collator, derive_seed, to_model_batch
    from bertcli.model import NUM_STATS, STAT_MLM_COUNT, pretraining_loss, summarize_stats
    from bertcli.schemas import PretrainConfig

    data = load_data(data_dir)
    model_tok = model_tokenizer(loaded)
    check_tokenizer_matches(data.manifest, model_tok, f"the data artifact '{data.path}'",
                            fix=f"make the data with the model's tokenizer: `bert pairs --tokenizer {model_tok.path}` "
                                "(then `bert mask`, for static masks)")
    positions = loaded.model.config.max_position_embeddings
    if data.max_seq_length > positions:
        raise ArtifactError(
            f"the data artifact '{data.path}' has sequences of up to {data.max_seq_length} tokens, "
            f"the model only {positions} positions",
            hint="evaluate on data built with a max_seq_length the model supports",
        )
    n = data.arrays.num_sequences if max_sequences is None else min(data.arrays.num_sequences, max_sequences)
    if n == 0:
        raise ArtifactError(f"the data artifact '{data.path}' holds no sequences")
    masking = None
    if data.kind == "pairs":
        defaults = PretrainConfig()
        masking = data.tokenizer.masking_spec(
            masked_lm_prob=defaults.masked_lm_prob, max_predictions_per_seq=defaults.max_predictions_per_seq,
            whole_word_mask=defaults.whole_word_mask,
        )

    def collator(dynamic: bool) -> Collator:
        return Collator(pad_id=data.special_ids["pad"], has_nsp=data.has_nsp, dynamic=dynamic, masking=masking)

    mask_chunk, collate = (collator(True) if masking is not None else None), collator(False)
    stats = torch.zeros(NUM_STATS, dtype=torch.float64)
    bar = tqdm(total=n, unit="seq", desc="evaluate", disable=not progress, dynamic_ncols=True)
    for chunk, start in enumerate(range(0, n, EVAL_CHUNK_SEQUENCES)):
        if mask_chunk is not None:  # the whole chunk, even past --max-sequences: its masks stay the same
            end = min(data.arrays.num_sequences, start + EVAL_CHUNK_SEQUENCES)
            rows = [data.arrays[i] for i in range(start, end)]
            rows = _unbatch_masked(mask_chunk(rows, derive_seed(seed, chunk)), rows)[: n - start]
        else:
            rows = [data.arrays[i] for i in range(start, min(n, start + EVAL_CHUNK_SEQUENCES))]
        rows.sort(key=lambda r: len(r["input_ids"]))  # length-sorted batches waste little on padding
        for first in range(0, len(rows), batch_size):
            batch = to_model_batch(collate(rows[first : first + batch_size]), loaded.device)
            with torch.no_grad():
                _, batch_stats = pretraining_loss(loaded.model, batch, data.has_nsp)
            stats += batch_stats.cpu()
            bar.update(len(batch.input_ids))
    bar.close()
    masked = int(stats[STAT_MLM_COUNT])
    if masked == 0:
        raise ArtifactError(f"the data artifact '{data.path}' has no masked positions to evaluate")
    summary = summarize_stats(stats)
    return {
        "mlm_loss": summary["mlm_loss"],
        "mlm_accuracy": summary["mlm_accuracy"],
        "perplexity": math.exp(min(summary["mlm_loss"], 700.0)),
        "nsp_accuracy": summary.get("nsp_accuracy"),
        "sequences": n,
        "masked_tokens": masked,
        "masking": f"dynamic (seed {seed})" if masking is not None else "static (the artifact's)",
    }


def _unbatch_masked(batch: dict, rows: list[dict]) -> list[dict]:
    """The rows of a dynamically masked collator batch as a masked artifact's rows (input_ids after masking,
    masked_positions, masked_labels), so that the static collator can batch them again in any grouping."""
    queries = batch["query_positions"][:, 1:].numpy()  # (B, P): the masked positions; slot 0, [CLS], left out
    labels = batch["masked_labels"].numpy()  # (B, P): IGNORE_INDEX at the padding slots
    out = []
    for b, row in enumerate(rows):
        length = len(row["input_ids"])
        real = labels[b] != IGNORE_INDEX
        out.append({**row, "input_ids": batch["input_ids"][b, :length].numpy(),
                    "masked_positions": queries[b][real], "masked_labels": labels[b][real]})
    return out


# ---------------------------------------------------------------- embed


# Hangul attaches particles to a word (파이썬은: "Python" + topic marker); Chinese, Japanese, Thai, Lao, Khmer and
# Burmese are written without spaces between words.
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f"
                        r"\u1780-\u17ff]")


def find_word(text: str, word: str) -> tuple[int, int] | None:
    """Character span of the first occurrence of word in text, ignoring case: a whole word; for a Korean word one
    that starts with it (파이썬은); in a script written without spaces, anywhere. "an" is not found in "bank"."""
    escaped = re.escape(word)
    patterns = [rf"(?<!\w){escaped}(?!\w)"]
    if _HANGUL.search(word):
        patterns.append(rf"(?<!\w){escaped}")
    if _NO_SPACES.search(word):
        patterns.append(escaped)
    for pattern in patterns:
        m = re.search(pattern, text, flags=re.IGNORECASE)
        if m:
            return m.start(), m.end()
    return None


def embed(loaded: LoadedModel, word: str, sentences: Sequence[str], layer: int = -1) -> dict:
    """The word's contextual vector in each sentence (mean of its pieces' hidden states at `layer`) and cosine
    similarities, beside the static input-embedding ones (the same pieces give the same static vector)."""
    import torch

    if not word.strip():
        raise InputError("--word is empty", hint="give the word to look up, e.g. --word python")
    if not sentences:
        raise InputError("no sentences given", hint='pass one or more sentences, e.g. "He got bit by Python."')
    n_layers = loaded.model.config.num_hidden_layers
    if not -(n_layers + 1) <= layer <= n_layers:
        raise InputError(f"--layer {layer}: the model has layers 0 (embeddings) to {n_layers}",
                         hint=f"--layer {n_layers} (the last) or a negative index, -1 for the last")
    if word.strip() in loaded.tokenizer.all_special_tokens:
        raise InputError(f"--word {word.strip()!r} is a special token, not a word of the text",
                         hint="give a word that the sentences contain, e.g. --word python")
    spans = []
    for i, sentence in enumerate(sentences):
        span = find_word(sentence, word.strip())
        if span is None:
            raise InputError(
                f"the word {word!r} does not occur in sentence {i + 1}: {sentence!r}",
                hint="every sentence must contain the word as a whole word (case is ignored)",
            )
        spans.append(span)
    warnings: list[str] = []  # printed once every sentence is accepted: a refusal is one error, no warning
    enc = encode_texts(loaded, list(sentences), what=lambda i: f"sentence {i + 1}", offsets=True,
                       report=warnings.append)
    piece_positions: list[list[int]] = []
    pieces: list[list[str]] = []
    for i, (start, end) in enumerate(spans):
        offsets = enc["offset_mapping"][i]
        ids = enc["input_ids"][i]
        unk_id = loaded.tokenizer.unk_token_id
        # The pieces whose characters overlap the word; [UNK] counts as a piece, [CLS]/[SEP] do not.
        pos = [
            t
            for t, (a, b) in enumerate(offsets)
            if b > a and a < end and b > start and (ids[t] not in loaded.special_ids or ids[t] == unk_id)
        ]
        if not pos:
            raise InputError(
                f"the word {word!r} in sentence {i + 1} lies beyond the model's {loaded.max_length} positions",
                hint="shorten the sentence",
            )
        piece_positions.append(pos)
        pieces.append(loaded.tokenizer.convert_ids_to_tokens([ids[t] for t in pos]))
        if loaded.tokenizer.unk_token_id is not None and loaded.tokenizer.unk_token_id in [ids[t] for t in pos]:
            warnings.append(f"sentence {i + 1}: the word {word!r} contains pieces unknown to the vocabulary "
                            f"({pieces[-1]})")
    for message in warnings:
        warn(message)
    batch = pad_batch(loaded, enc)
    with torch.inference_mode():
        out = loaded.model.bert(**batch, output_hidden_states=True)
        hidden = out.hidden_states[layer]  # (B, T, H)
        word_emb = loaded.model.bert.embeddings.word_embeddings.weight  # (V, H)
        contextual = torch.stack([hidden[i, pos].mean(0) for i, pos in enumerate(piece_positions)]).float()
        static = torch.stack(
            [word_emb[batch["input_ids"][i, pos]].mean(0) for i, pos in enumerate(piece_positions)]
        ).float()
    return {
        "word": word,
        "sentences": list(sentences),
        "layer": layer if layer >= 0 else n_layers + 1 + layer,
        "pieces": pieces,
        "contextual_similarity": _cosine_matrix(contextual),
        "static_similarity": _cosine_matrix(static),
        "vectors": contextual.cpu().tolist(),
    }


def _cosine_matrix(x: Any) -> list[list[float]]:
    import torch

    unit = torch.nn.functional.normalize(x, dim=-1)  # (N, H)
    return (unit @ unit.T).clamp(-1.0, 1.0).cpu().tolist()


# ---------------------------------------------------------------- text output for the CLI


def format_nsp(row: dict) -> str:
    return f"{row['label']}  (IsNext probability {row['is_next_probability']:.4f})"


def format_fill_mask(masks: list[dict], mask_token: str) -> str:
    """Each mask's predictions a line each: probability, token, the filled-in text (headed per mask if several)."""
    lines = []
    for m in masks:
        if len(masks) > 1:
            lines.append(f"{mask_token} #{m['mask_index'] + 1} (token {m['position']}):")
        lines.extend(f"  {p['probability']:.4f}  {_padded(p['token'], 15)} {p['sequence']}" for p in m["predictions"])
    return "\n".join(lines)


def _padded(text: str, columns: int) -> str:
    """text padded to `columns` terminal columns: Hangul, kana and CJK ideographs take two each."""
    width = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, columns - width)


def format_metrics(metrics: dict) -> str:
    nsp = "n/a (no sentence pairs)" if metrics["nsp_accuracy"] is None else f"{metrics['nsp_accuracy']:.4f}"
    return (
        f"{metrics['sequences']:,} sequences, {metrics['masked_tokens']:,} masked tokens\n"
        f"mlm_loss      {metrics['mlm_loss']:.4f}\nmlm_accuracy  {metrics['mlm_accuracy']:.4f}\n"
        f"perplexity    {metrics['perplexity']:.2f}\nnsp_accuracy  {nsp}"
    )


def format_embedding(result: dict) -> str:
    """The sentences with the word's pieces, then the contextual and the static similarity matrices."""
    labels = [f"s{i + 1}" for i in range(len(result["sentences"]))]
    lines = [f"{label}: {sentence}    pieces: {' '.join(pieces)}"
             for label, sentence, pieces in zip(labels, result["sentences"], result["pieces"])]
    lines += ["", f"contextual (layer {result['layer']}) cosine similarity:",
              format_matrix(result["contextual_similarity"], labels),
              "", "static (input embedding) cosine similarity:", format_matrix(result["static_similarity"], labels)]
    return "\n".join(lines)


def format_matrix(matrix: Sequence[Sequence[float]], labels: Iterable[str]) -> str:
    """A small similarity matrix as aligned text rows."""
    labels = list(labels)
    head = " " * 6 + "".join(f"{lab:>8}" for lab in labels)
    lines = [head]
    for lab, row in zip(labels, matrix):
        lines.append(f"{lab:>6}" + "".join(f"{v:8.3f}" for v in row))
    return "\n".join(lines)

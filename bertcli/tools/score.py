"""`bert score`: pseudo-log-likelihoods of sentences, and minimal-pair accuracy (BLiMP's format), with a masked LM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from bertcli.errors import ArtifactError, InputError
from bertcli.labelled import is_labelled_file, load_examples, option_setting
from bertcli.model_dir import LoadedModel
from bertcli.pll import batched, masking_plan, minimal_pair_accuracy, pseudo_log_likelihoods, pseudo_perplexity
from bertcli.textio import check_unicode, parse_json_line, text_lines
from bertcli.vocab import warn_if_mostly_unknown

# BLiMP's fields, and the keys a pair may be grouped by, most specific first (the default is the first present).
GOOD, BAD = "sentence_good", "sentence_bad"
GROUP_KEYS = ("UID", "linguistics_term", "field")
ALL = "all"


def read_minimal_pairs(
    path: str | Path, group_by: str | None = None
) -> tuple[list[tuple[int, str, str, str]], str | None]:
    """(line, good, bad, group) of every pair of a BLiMP-style JSON-lines file, and the key grouped by.

    group_by None: the first of UID, linguistics_term, field that every pair has, as a name (none: one group,
    "all"). Judged over the whole file, not its first line: the grouping must not change with the order of the
    lines. A given group_by must be a name in every pair.
    """
    p = Path(path)
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    hint = f'each line must be a JSON object with "{GOOD}" and "{BAD}" (BLiMP\'s format)'
    keys = [group_by] if group_by is not None else list(GROUP_KEYS)
    common = set(keys)  # the candidate keys every pair so far has
    for line_no, line in text_lines(p, "pairs file", "pass a JSON-lines file of minimal pairs (BLiMP's format)"):
        obj = parse_json_line(p, line_no, line, hint)
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{line_no}: expected a JSON object, got {type(obj).__name__}", hint=hint)
        texts = []
        for key in (GOOD, BAD):
            if key not in obj:
                raise InputError(f"{p}:{line_no}: no field '{key}'", hint=hint)
            value = obj[key]
            if not isinstance(value, str):
                raise InputError(f"{p}:{line_no}: field '{key}' is not a string (got {json.dumps(value)})", hint=hint)
            if not value.strip():
                raise InputError(f"{p}:{line_no}: field '{key}' is empty", hint="both sentences of a pair need text")
            texts.append(value)
        groups = {}
        for key in keys:
            if key not in obj:
                if key == group_by:
                    raise InputError(f"{p}:{line_no}: no field '{group_by}' to group by",
                                     hint="give every pair that field, or choose another with --group-by")
                common.discard(key)
                continue
            value = obj[key]
            # A group is a name or a number; null, a list or an object is no group name (its text would be
            # Python's repr, "None" or "{'a': 1}").
            if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str)
                                                                                and not value.strip()):
                if key == group_by:
                    raise InputError(f"{p}:{line_no}: field '{key}' is {json.dumps(value)}, not a group name",
                                     hint="give every pair a name (a string) in that field")
                common.discard(key)
                continue
            groups[key] = str(value)
        rows.append((line_no, texts[0], texts[1], groups))
    if not rows:
        raise InputError(f"{p}: no pairs (every line is blank)", hint=hint)
    chosen = next((k for k in keys if k in common), None)
    return [(line_no, good, bad, groups[chosen] if chosen else ALL) for line_no, good, bad, groups in rows], chosen


def check_scorable(loaded: LoadedModel) -> None:
    """The tokenizer must have a mask token (the model's MLM head is checked by load_model(need_mlm=True))."""
    if loaded.tokenizer.mask_token_id is None:
        raise ArtifactError(f"'{loaded.path}': the tokenizer has no mask token, so it cannot score by masking",
                            hint="give the tokenizer its mask token (mask_token in tokenizer_config.json)")


CHUNK_TEXTS = 2048  # even: a chunk of minimal pairs' sentences holds whole pairs
"""Texts tokenized and scored at a time: memory is bounded by a chunk, not by the file (a chunk is whole pairs)."""


def _char_limit(loaded: LoadedModel) -> int:
    from bertcli.tools.predict import CHARS_PER_POSITION

    return loaded.max_length * CHARS_PER_POSITION


def _encode(loaded: LoadedModel, texts: Sequence[str]) -> Any:
    """The tokenizer's encoding, of at most the characters that can fit the model's positions and one more: a longer
    text is surely too long, and is refused without the tokenizer's time and memory for all of it."""
    cut = _char_limit(loaded) + 1
    return loaded.tokenizer([t[:cut] for t in texts], add_special_tokens=True, return_special_tokens_mask=True)


def _encode_checked(loaded: LoadedModel, texts: Sequence[str], what: Callable[[int], str]) -> Any:
    """The tokenizer's encoding of texts, each of which must be scorable: not empty, Unicode, within the model's
    positions (all over-long ones counted), with a token to score."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise InputError(f"{what(i)} is empty", hint="every sentence to score needs text")
        check_unicode(text, what(i))
    enc = _encode(loaded, texts)
    char_limit = _char_limit(loaded)
    too_long = [i for i in range(len(texts)) if len(enc["input_ids"][i]) > loaded.max_length]
    if too_long:
        i = too_long[0]
        raise InputError(
            f"{what(i)} has {len(enc['input_ids'][i]):,}" + ("+" if len(texts[i]) > char_limit else "")
            + f" tokens, more than the model's {loaded.max_length} positions"
            + (f" (and {len(too_long) - 1} more sentences)" if len(too_long) > 1 else ""),
            hint="shorten or split them: a truncated sentence would get the score of another sentence",
        )
    for i, special in enumerate(enc["special_tokens_mask"]):
        if all(special):
            raise InputError(f"{what(i)} has no tokens to score: {texts[i]!r}",
                             hint="every sentence to score needs text")
    return enc


def score_stream(
    loaded: LoadedModel,
    numbered: Callable[[], Iterable[tuple[str, str]]],
    variant: str = "original",
    batch_size: int = 256,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """{"text", "pll", "pseudo_perplexity", "tokens"} for each (where, text) of `numbered()`, in order (natural logs;
    tokens = scored pieces). `numbered` is called twice: a first pass checks every text (a bad one is refused before
    any score is given) and counts the work; the second scores CHUNK_TEXTS at a time, so memory does not grow with
    the input. Identical texts within a chunk are scored once (a chunk holds whole minimal pairs, so a pair of
    identical sentences is an exact tie)."""
    from tqdm import tqdm

    check_scorable(loaded)
    tok = loaded.tokenizer
    copies = unknown = 0
    for chunk in batched(numbered(), CHUNK_TEXTS):
        enc = _encode_checked(loaded, [t for _, t in chunk], lambda i: chunk[i][0])
        for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
            scored = [t for t, sp in zip(ids, special) if not sp]
            copies += len(scored)
            unknown += scored.count(tok.unk_token_id) if tok.unk_token_id is not None else 0
    # an [UNK] is scored as the token [UNK]: two texts of unknowns score alike
    warn_if_mostly_unknown(unknown, copies, "the text", loaded.path, (t for _, t in numbered()))
    bar = tqdm(total=copies, desc="score", unit="copy", dynamic_ncols=True, disable=not progress)
    try:
        for chunk in batched(numbered(), CHUNK_TEXTS):
            yield from _score_chunk(loaded, [t for _, t in chunk], variant, batch_size, bar)
    finally:
        bar.close()


def _score_chunk(loaded: LoadedModel, texts: list[str], variant: str, batch_size: int, bar: Any) -> list[dict]:
    tok = loaded.tokenizer
    enc = _encode(loaded, texts)  # checked in the first pass
    # Identical token sequences are scored once: less work, and equal sentences get bit-equal scores (a tie),
    # whatever batch and padding their copies would otherwise land in.
    unique: dict[tuple, int] = {}
    sentences: list[list[int]] = []
    plans: list[list[tuple[int, tuple[int, ...]]]] = []
    index_of: list[int] = []
    for i in range(len(texts)):
        ids = enc["input_ids"][i]
        scored = [s == 0 for s in enc["special_tokens_mask"][i]]
        word_ids = enc.word_ids(i) if variant == "word_l2r" else None
        key = (tuple(ids), tuple(-1 if w is None else w for w in word_ids) if word_ids is not None else ())
        if key not in unique:
            unique[key] = len(sentences)
            sentences.append(ids)
            plans.append(masking_plan(scored, word_ids, variant))
        else:
            bar.update(sum(scored))  # counted in the total, scored with its twin
        index_of.append(unique[key])
    plls = pseudo_log_likelihoods(
        loaded.model.bert,
        loaded.model.cls.predictions,
        sentences,
        plans,
        mask_id=tok.mask_token_id,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.mask_token_id,  # padding is not attended
        batch_size=batch_size,
        device=loaded.device,
        on_batch=bar.update,
    )
    rows = []
    for text, k in zip(texts, index_of):
        n = len(plans[k])
        rows.append({"text": text, "pll": plls[k], "pseudo_perplexity": pseudo_perplexity(plls[k], n), "tokens": n})
    return rows


def score_texts(
    loaded: LoadedModel,
    texts: Sequence[str],
    variant: str = "original",
    batch_size: int = 256,
    what: Callable[[int], str] = lambda i: f"text {i + 1}",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """score_stream over a list of texts; what(i) names text i in a refusal."""
    return list(score_stream(loaded, lambda: ((what(i), t) for i, t in enumerate(texts)), variant, batch_size,
                             progress))


def score_file(
    loaded: LoadedModel, path: str | Path, variant: str = "original", batch_size: int = 256, progress: bool = True,
    text_field: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every non-blank line of a text file, read twice and never held whole (score_stream); or the text field of
    every example of a CSV, TSV or JSON-lines file (text_field; default `sentence`, else `text`), as `bert predict`
    reads one: scoring such a file's raw lines would score its header and its syntax."""
    p = Path(path)
    if is_labelled_file(p):
        data = load_examples(p, "auto", text_field, label_field=None, setting=option_setting)
        numbered = [(f"{data.path}:{e.line}", e.text) for e in data.examples]
        return score_stream(loaded, lambda: iter(numbered), variant, batch_size, progress)
    if text_field is not None:
        raise InputError(f"--text-field {text_field}: '{p}' is a text file, one sentence a line, without fields",
                         hint="drop --text-field, or give a .csv, .tsv or .jsonl file")
    if next(text_lines(p, "input file"), None) is None:
        raise InputError(f"{p}: no sentences (every line is blank)", hint="write one sentence a line")
    return score_stream(loaded, lambda: ((f"{p}:{n}", t) for n, t in text_lines(p, "input file")), variant,
                        batch_size, progress)


def score_pairs(
    loaded: LoadedModel,
    path: str | Path,
    group_by: str | None = None,
    variant: str = "original",
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-pair rows (line, group, pll_good, pll_bad) and the summary of minimal_pair_accuracy (+ group_by, variant)."""
    p = Path(path)
    pairs, key = read_minimal_pairs(p, group_by)
    fields = (GOOD, BAD)

    def numbered() -> Iterator[tuple[str, str]]:  # good then bad, so that a chunk (an even count) holds whole pairs
        for line, good, bad, _ in pairs:
            for field, text in zip(fields, (good, bad)):
                yield f"{p}:{line}: field '{field}'", text

    scores = iter(score_stream(loaded, numbered, variant, batch_size, progress))
    rows = [
        {"line": line, "group": group, "pll_good": next(scores)["pll"], "pll_bad": next(scores)["pll"]}
        for line, _, _, group in pairs
    ]
    summary = minimal_pair_accuracy(
        [r["pll_good"] for r in rows], [r["pll_bad"] for r in rows], [r["group"] for r in rows]
    )
    return rows, {**summary, "group_by": key, "variant": variant}

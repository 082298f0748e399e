"""`bert predict`: labels and probabilities from a fine-tuned sequence classifier (`bert finetune`, or any HF one)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bertcli.errors import ArtifactError, InputError, one_line
from bertcli.labelled import load_examples, option_setting
from bertcli.model_dir import check_two_segments
from bertcli.textio import check_unicode, text_lines
from bertcli.vocab import count_unknown, warn_if_mostly_unknown


@dataclass
class Classifier:
    model: Any  # a transformers *ForSequenceClassification, in eval mode, on `device`
    tokenizer: Any
    device: Any
    path: Path
    max_length: int
    text_field: str | None  # the fields `bert finetune` read (None: `sentence` if present, else `text`)
    text_pair_field: str | None
    single_texts: bool  # its `bert finetune` manifest says it classifies single texts (False: pairs, or unknown)


def load_classifier(path: str | Path, device: str = "auto") -> Classifier:
    """A sequence-classification model directory and its tokenizer; the text fields from its manifest, if any."""
    from bertcli.model_dir import (
        LOAD_FAILED_HINT,
        check_tokenizer_fits,
        read_model_config,
        resolve_device,
        warn_if_case_is_lost,
    )
    from bertcli.stages.finetune import check_model_dir

    model_dir = check_model_dir(path, bert_only=False)
    config = read_model_config(model_dir)
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        is_bert = config.get("model_type") == "bert"
        raise ArtifactError(
            f"'{model_dir}' is not a sequence classifier (config.json model_type: {config.get('model_type')!r}, "
            f"architectures: {', '.join(architectures) or 'none'})",
            hint="fine-tune it first: bert finetune --model DIR --train FILE --output OUT" if is_bert else
            "pass a directory written by `bert finetune`, or a Hugging Face *ForSequenceClassification model",
        )
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    except Exception as exc:  # the library raises many types for a broken directory
        raise ArtifactError(f"'{model_dir}': cannot load the classifier: {one_line(exc)[:300]}",
                            hint=LOAD_FAILED_HINT) from exc
    check_tokenizer_fits(tokenizer, model.config, model_dir, bert=False)
    warn_if_case_is_lost(tokenizer, model_dir)
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    manifest: dict = {}
    if (model_dir / "manifest.json").is_file():
        try:
            manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{model_dir / 'manifest.json'}: unreadable ({exc})") from exc
    max_length = int(getattr(model.config, "max_position_embeddings", 512))
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    return Classifier(model, tokenizer, dev, model_dir, max_length, manifest.get("text_field"),
                      manifest.get("text_pair_field"), manifest.get("task") == "sequence classification")


def classify(
    clf: Classifier,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    batch_size: int = 32,
    what: Callable[[int], str] = lambda i: f"text {i + 1}",
) -> list[dict[str, Any]]:
    """{"text", ["text_pair"], "label", "probability", "probabilities"} for each text, in input order."""
    import torch

    from bertcli.errors import warn

    for i, text in enumerate(texts):
        if not text.strip():
            raise InputError(f"{what(i)} is empty", hint="every text to classify needs text")
        check_unicode(text, what(i))
        if pairs is not None:
            check_unicode(pairs[i], f"{what(i)} (second text)")
    id2label = clf.model.config.id2label
    truncated: list[int] = []
    unknown = total = 0
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
    probs: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        firsts = [texts[i] for i in idx]
        seconds = [pairs[i] for i in idx] if pairs else None
        encoded = clf.tokenizer(firsts, seconds)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        batch_unknown, batch_total = count_unknown(encoded, clf.tokenizer)
        unknown, total = unknown + batch_unknown, total + batch_total
        truncated.extend(i for i, n in zip(idx, lengths) if n > clf.max_length)
        enc = clf.tokenizer(firsts, seconds, padding=True, truncation=True, max_length=clf.max_length,
                            return_tensors="pt")
        with torch.inference_mode():
            logits = clf.model(**{k: v.to(clf.device) for k, v in enc.items()}).logits  # (B, K)
            for i, row in zip(idx, torch.softmax(logits.float(), dim=-1).cpu().tolist()):
                probs[i] = row
    warn_if_mostly_unknown(unknown, total, "the input", clf.path, texts)
    if truncated:  # one line, not one per text: a file of long texts would bury the results
        first = ", ".join(what(i) for i in sorted(truncated)[:3])
        warn(f"{len(truncated)} of {len(texts)} inputs are longer than the model's {clf.max_length} tokens and were "
             f"truncated (first: {first})")
    rows = []
    for i, p in enumerate(probs):
        best = max(range(len(p)), key=p.__getitem__)
        row: dict[str, Any] = {"text": texts[i]}
        if pairs:
            row["text_pair"] = pairs[i]
        row.update(label=id2label[best], probability=p[best],
                   probabilities={id2label[k]: v for k, v in enumerate(p)})
        rows.append(row)
    return rows


def classify_file(
    clf: Classifier, path: str | Path, batch_size: int = 32, text_field: str | None = None,
    text_pair_field: str | None = None,
) -> list[dict[str, Any]]:
    """Classify every example of a CSV, TSV or JSONL file (read as `bert finetune` reads training files, its label
    column ignored), or every line of a .txt file. The fields are those the model was fine-tuned on unless given."""
    p = Path(path)
    if text_pair_field is not None and clf.single_texts:
        raise InputError(f"--text-pair-field {text_pair_field}: '{clf.path}' was fine-tuned on single texts, not pairs",
                         hint="drop --text-pair-field; a pair classifier is fine-tuned with text_pair_field set")
    text_field = text_field or clf.text_field
    text_pair_field = text_pair_field or clf.text_pair_field
    check_two_segments(clf.model.config, clf.path, needed=text_pair_field is not None)
    if p.suffix.lower() == ".txt":
        if text_pair_field is not None:
            raise InputError(f"{p}: a .txt file holds one text a line, and '{clf.path}' classifies sentence pairs",
                             hint=f"give the pairs in a .csv, .tsv or .jsonl file with fields "
                             f"{text_field or 'sentence/text'} and {text_pair_field}")
        numbered = list(text_lines(p, "input file"))
        if not numbered:
            raise InputError(f"{p}: no texts (every line is blank)", hint="write one text a line")
        rows = classify(clf, [t for _, t in numbered], None, batch_size, what=lambda i: f"{p}:{numbered[i][0]}")
        return [{"line": line, **row} for (line, _), row in zip(numbered, rows)]  # blank lines are skipped
    data = load_examples(p, "auto", text_field, text_pair_field, label_field=None, setting=option_setting)
    lines = [e.line for e in data.examples]
    pairs = [e.text_pair for e in data.examples] if text_pair_field else None
    rows = classify(clf, [e.text for e in data.examples], pairs, batch_size, what=lambda i: f"{data.path}:{lines[i]}")
    return [{"line": line, **row} for line, row in zip(lines, rows)]


def classify_arguments(clf: Classifier, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """Texts given on the command line: one text each, so a pair classifier is told where its pairs go."""
    if clf.text_pair_field is not None:
        raise InputError(
            f"'{clf.path}' classifies sentence pairs: give them in --input FILE with fields "
            f"{clf.text_field or 'sentence/text'} and {clf.text_pair_field}",
            hint=f"e.g. one JSON object a line: {{\"{clf.text_field or 'sentence'}\": \"…\", "
            f"\"{clf.text_pair_field}\": \"…\"}}",
        )
    return classify(clf, texts, batch_size=batch_size)


def format_result(row: dict[str, Any]) -> str:
    """label, probability and text on one line: a tab or line break inside a text is shown escaped."""
    shown = _one_line(row["text"]) + (f"  ||  {_one_line(row['text_pair'])}" if "text_pair" in row else "")
    return f"{row['label']}\t{row['probability']:.4f}\t{shown}"


# Every character str.splitlines() breaks at, and the tab: each shown as its escape, so a result stays one line.
_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\v": "\\v", "\f": "\\f", "\x1c": "\\x1c",
                          "\x1d": "\\x1d", "\x1e": "\\x1e", "\x85": "\\x85", "\u2028": "\\u2028",
                          "\u2029": "\\u2029"})


def _one_line(text: str) -> str:
    return text.translate(_ESCAPES)

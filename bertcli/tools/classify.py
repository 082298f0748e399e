"""`bert predict`: labels and probabilities from a fine-tuned sequence classifier (`bert finetune`, or any HF one)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bertcli.errors import ArtifactError, InputError, one_line
from bertcli.labelled import load_examples


@dataclass
class Classifier:
    model: Any  # a transformers *ForSequenceClassification, in eval mode, on `device`
    tokenizer: Any
    device: Any
    path: Path
    max_length: int
    text_field: str | None  # the fields `bert finetune` read (None: `sentence` if present, else `text`)
    text_pair_field: str | None


def load_classifier(path: str | Path, device: str = "auto") -> Classifier:
    """A sequence-classification model directory and its tokenizer; the text fields from its manifest, if any."""
    from bertcli.model_dir import LOAD_FAILED_HINT, read_model_config, resolve_device
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
                      manifest.get("text_pair_field"))


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
    id2label = clf.model.config.id2label
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
    probs: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        firsts = [texts[i] for i in idx]
        seconds = [pairs[i] for i in idx] if pairs else None
        lengths = [len(ids) for ids in clf.tokenizer(firsts, seconds)["input_ids"]]
        for k, n in enumerate(lengths):
            if n > clf.max_length:
                warn(f"{what(idx[k])} has {n} tokens, more than the model's {clf.max_length}; truncated")
        enc = clf.tokenizer(firsts, seconds, padding=True, truncation=True, max_length=clf.max_length,
                            return_tensors="pt")
        with torch.inference_mode():
            logits = clf.model(**{k: v.to(clf.device) for k, v in enc.items()}).logits  # (B, K)
            for i, row in zip(idx, torch.softmax(logits.float(), dim=-1).cpu().tolist()):
                probs[i] = row
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


def classify_file(clf: Classifier, path: str | Path, batch_size: int = 32) -> list[dict[str, Any]]:
    """Classify every example of a CSV, TSV or JSONL file (read as `bert finetune` reads training files, its label
    column ignored)."""
    data = load_examples(path, "auto", clf.text_field, clf.text_pair_field, label_field=None)
    lines = [e.line for e in data.examples]
    pairs = [e.text_pair for e in data.examples] if clf.text_pair_field else None
    return classify(clf, [e.text for e in data.examples], pairs, batch_size, what=lambda i: f"{data.path}:{lines[i]}")

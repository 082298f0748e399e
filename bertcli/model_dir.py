"""A trained BERT's directory: finding it (a `bert pretrain` run means its final/), checking its files, loading
it with its tokenizer on a device. Shared by the read-only tools and `bert finetune`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertcli.artifacts import RUN_MARKER
from bertcli.errors import ArtifactError, InputError, one_line, warn

# Files from which weights are taken (single file or sharded index). Only safetensors: a pickled
# pytorch_model.bin can run code when it is loaded, and a model shared with you must never do that.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# What to do when the library cannot read a model directory whose files are all there: a truncated copy, a
# download cut short, files from two different models.
LOAD_FAILED_HINT = "the files are damaged or do not belong together: copy or download the model directory again"


@dataclass
class LoadedModel:
    """A BertForPreTraining with its tokenizer, ready for inference."""

    model: Any  # transformers.BertForPreTraining, in eval mode, on `device`
    tokenizer: Any  # transformers tokenizer (fast)
    device: Any  # torch.device
    path: Path
    max_length: int
    """Longest input in tokens, [CLS]/[SEP] included: the model's position embeddings (or the tokenizer's limit)."""

    @property
    def special_ids(self) -> set[int]:
        return set(self.tokenizer.all_special_ids)


def resolve_device(device: str = "auto") -> Any:
    """auto → cuda when available, else cpu; otherwise the named device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:  # torch's message lists its twenty-odd device types: not ours to offer
        raise InputError(f"--device '{device}': not a device name; bertcli runs on cpu or cuda only",
                         hint="use auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device '{device}': bertcli runs on cpu or cuda only", hint="use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here", hint="use --device cpu")
    return dev


def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face model directory, or a `bert pretrain` run directory (its final/ checkpoint is used)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"model directory '{p}' does not exist", hint="pass --model DIR of a trained BERT")
    if not p.is_dir():
        raise ArtifactError(f"--model '{p}' is a file, expected a model directory",
                            hint="pass the directory that holds config.json, the weights and the tokenizer")
    if not (p / "config.json").is_file() and ((p / "manifest.json").is_file() or (p / RUN_MARKER).is_file()):
        from bertcli.artifacts import read_bertcli_manifest

        stage = (read_bertcli_manifest(p) or {}).get("stage")
        if stage and stage != "pretrain":  # a tokenizer or data artifact given where a model belongs
            raise ArtifactError(f"'{p}' is a {stage!r} artifact, not a model",
                                hint="pass a `bert pretrain` run (or its final/) or a Hugging Face BERT directory")
        # A run directory: use its final checkpoint, which is what a user means by "the model".
        if (p / "final" / "config.json").is_file():
            return p / "final"
        steps = sorted(d for d in p.glob("step-*") if (d / "config.json").is_file())
        hint = f"pass --model {steps[-1]} to use the newest checkpoint" if steps else "let `bert pretrain` finish"
        raise ArtifactError(f"run directory '{p}' has no final/ checkpoint yet", hint=hint)
    return p


def read_model_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ArtifactError(
            f"'{model_dir}' has no config.json: not a Hugging Face model directory",
            hint="pass the directory written by save_pretrained (e.g. run/final)",
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{config_path}: not valid JSON ({exc})",
                            hint="restore the file from where the model came from (save_pretrained writes it)") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{config_path}: expected a JSON object",
                            hint="the model's config.json is damaged; save the model again with save_pretrained")
    return data


def check_is_bert(model_dir: Path) -> dict:
    """The directory's config.json, if it describes a BERT (model_type 'bert'): what these commands and `bert
    finetune` are built for (another architecture would fail later, deep inside transformers)."""
    config = read_model_config(model_dir)
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ArtifactError(
            f"'{model_dir}' holds a {model_type or 'model of unknown type'} model, not BERT "
            f"(config.json model_type={model_type!r})",
            hint="these commands take a BERT model (model_type 'bert'), e.g. the final/ directory of `bert pretrain`",
        )
    return config


def check_model_files(model_dir: Path, model_class: str) -> None:
    """Safetensors weights and a tokenizer must be there; model_class names the class for the conversion hint."""
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        pickled = any((model_dir / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"))
        if pickled:
            raise ArtifactError(
                f"'{model_dir}' has only pickled weights (pytorch_model.bin); bertcli loads safetensors only, since "
                "unpickling can run code",
                hint=f"if you trust the model, convert it once: {model_class}.from_pretrained(DIR)"
                ".save_pretrained(DIR) writes model.safetensors",
            )
        raise ArtifactError(
            f"'{model_dir}' has no weights (none of {', '.join(WEIGHT_FILES)})",
            hint="the checkpoint was not finished or not saved with save_pretrained; use another checkpoint",
        )
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ArtifactError(
            f"'{model_dir}' has no tokenizer (tokenizer.json or vocab.txt)",
            hint="save the tokenizer beside the model (tokenizer.save_pretrained(DIR))",
        )


def load_model(
    path: str | Path,
    device: str = "auto",
    need_mlm: bool = False,
    need_nsp: bool = False,
    attentions: bool = False,
) -> LoadedModel:
    """Load a BertForPreTraining directory (ours or any Hugging Face one) and its tokenizer, checking both."""
    model_dir = resolve_model_dir(path)
    check_is_bert(model_dir)
    check_model_files(model_dir, "BertForPreTraining")

    import transformers
    from transformers import AutoTokenizer, BertForPreTraining

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # the library raises many types for a broken tokenizer directory
        raise ArtifactError(f"'{model_dir}': cannot load the tokenizer: {one_line(exc)[:300]}",
                            hint=LOAD_FAILED_HINT) from exc
    try:
        model, info = BertForPreTraining.from_pretrained(
            str(model_dir), output_loading_info=True, attn_implementation="eager" if attentions else "sdpa",
            use_safetensors=True,
        )
    except Exception as exc:
        raise ArtifactError(f"'{model_dir}': cannot load the weights: {one_line(exc)[:300]}",
                            hint=LOAD_FAILED_HINT) from exc
    missing = set(info.get("missing_keys", ()))
    if need_mlm and any(k.startswith("cls.predictions") for k in missing):
        raise ArtifactError(
            f"'{model_dir}' has no masked-LM head (it was saved without BertForPreTraining's cls.predictions)",
            hint="use a model saved as BertForPreTraining or BertForMaskedLM",
        )
    if need_nsp and any(k.startswith("cls.seq_relationship") for k in missing):
        raise ArtifactError(
            f"'{model_dir}' has no next-sentence-prediction head (cls.seq_relationship is missing)",
            hint="use a model saved as BertForPreTraining (MLM + NSP), e.g. the final/ directory of `bert pretrain`",
        )
    check_tokenizer_fits(tokenizer, model.config, model_dir, two_segments=need_nsp)
    warn_if_case_is_lost(tokenizer, model_dir)
    # No TF32 on the GPU: its 10-bit mantissa moves a pseudo-log-likelihood by ~1e-3, and these tools' figures
    # must match transformers' own fp32 results (docs/scoring.md); inference here is small beside training.
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    max_length = int(model.config.max_position_embeddings)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, path=model_dir, max_length=max_length)


def check_tokenizer_fits(
    tokenizer: Any, config: Any, model_dir: Path, two_segments: bool = False, bert: bool = True
) -> None:
    """The tokenizer's ids must all have an embedding (else an IndexError deep in the first forward); bert: it must
    be a BERT one ([CLS], [SEP]; `bert predict` takes any sequence classifier); two_segments: the input will be a
    pair of texts, so the model needs a second segment embedding."""
    model_vocab = getattr(config, "vocab_size", None)
    if isinstance(model_vocab, int) and len(tokenizer) > model_vocab:
        raise ArtifactError(
            f"'{model_dir}': the tokenizer has {len(tokenizer)} tokens but the model only {model_vocab} embeddings",
            hint="the tokenizer files do not belong to this model (or tokens were added without "
            "model.resize_token_embeddings)",
        )
    if bert and (tokenizer.cls_token_id is None or tokenizer.sep_token_id is None):
        raise ArtifactError(f"'{model_dir}': the tokenizer defines no [CLS]/[SEP] tokens, so it is not a BERT one")
    check_two_segments(config, model_dir, two_segments)


def check_two_segments(config: Any, model_dir: Path, needed: bool = True) -> None:
    """A pair of texts ([CLS] A [SEP] B [SEP]) marks B with segment id 1: a model with one segment embedding
    (type_vocab_size 1, as RoBERTa-style conversions have) cannot read it."""
    segments = getattr(config, "type_vocab_size", 2)
    if needed and isinstance(segments, int) and segments < 2:
        raise ArtifactError(
            f"'{model_dir}' has {segments} segment embedding (type_vocab_size), so it cannot read a pair of texts",
            hint="give single texts, or use a BERT with two segment types (type_vocab_size 2), as `bert pretrain` "
            "makes",
        )


def warn_if_case_is_lost(tokenizer: Any, model_dir: Path) -> None:
    """A vocabulary with cased pieces behind a tokenizer that lowercases (a directory with only vocab.txt, no
    tokenizer_config.json, gets transformers' default, do_lower_case=True): the cased pieces can never be reached and
    "The" and "the" become one text. Said, since transformers does the same without a word."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is None or normalizer.normalize_str("Ab") != "ab":
        return
    specials = set(tokenizer.all_special_tokens)
    vocab = [t for t in tokenizer.get_vocab() if t not in specials]
    cased = sum(1 for t in vocab if any(c.isupper() for c in t))
    if cased > 0.05 * len(vocab):
        warn(f"'{model_dir}': {cased:,} of the vocabulary's {len(vocab):,} pieces have capitals, but the tokenizer "
             "lowercases the text, so those pieces are never used; if the model is cased, save its tokenizer with "
             "do_lower_case false (tokenizer_config.json)")


def load_init_model(src: Path, tokenizer_dir: Path, data_path: Path, seed: int) -> tuple[Any, list[str], int]:
    """`bert pretrain`'s init_from: the BertForPreTraining in `src`, for data tokenized by `tokenizer_dir`.

    The model's vocabulary (vocab.txt or tokenizer.json) must be the data's, or a prefix of it: a tokenizer that
    `bert train-vocab --set extend_from=SRC` extended keeps every old id and appends. Then the model grows to the
    data's vocabulary, each new row the mean of the old rows of the pieces the model's own tokenizer splits the new
    token into (model.grow_vocabulary, vocab_extension.spell_new_tokens). The seed fixes weights the directory
    lacks (e.g. the NSP head of a BertForMaskedLM). Returns the model, the names of those missing weights and the
    rows added.
    """
    from bertcli.vocab import read_base_tokenizer, read_vocab
    from bertcli.vocab_extension import is_vocab_prefix, spell_new_tokens

    if not (src / "config.json").is_file():
        raise ArtifactError(
            f"init_from '{src}' is not a Hugging Face model directory (no config.json)",
            hint="point init_from at a directory written by save_pretrained (e.g. a run's final/)",
        )
    if not any((src / name).is_file() for name in WEIGHT_FILES):
        raise ArtifactError(
            f"init_from '{src}' has no model.safetensors: weights are only read from safetensors",
            hint="convert the checkpoint to safetensors (save_pretrained writes it by default)",
        )
    old_vocab, new_vocab = read_vocab(src), read_vocab(tokenizer_dir)
    if old_vocab is not None and new_vocab is not None:
        if not is_vocab_prefix(old_vocab, new_vocab):
            raise ArtifactError(
                f"init_from '{src}' ({len(old_vocab):,} tokens) has a vocabulary that is neither the one of the "
                f"data '{data_path}' ({len(new_vocab):,} tokens) nor a prefix of it",
                hint=f"build the data with that model's tokenizer (bert pairs --tokenizer {src}), or with one "
                f"extended from it (bert train-vocab --set extend_from={src})",
            )
    import torch

    from bertcli.model import grow_vocabulary, load_pretrained_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, missing = load_pretrained_model(str(src))
    if old_vocab is None or new_vocab is None or len(new_vocab) == len(old_vocab):
        return model, missing, 0
    if model.config.vocab_size < len(old_vocab):
        raise ArtifactError(f"init_from '{src}': the model has {model.config.vocab_size:,} token rows but its "
                            f"tokenizer {len(old_vocab):,} tokens", hint="the tokenizer files do not belong to it")
    base = read_base_tokenizer(src)
    pieces = spell_new_tokens(old_vocab, new_vocab, base.continuing_subword_prefix, base.max_input_chars_per_word)
    return model, missing, grow_vocabulary(model, len(old_vocab), pieces, seed=seed)

"""WordPiece tokenizers: the normalization pipeline, building one from a vocabulary, loading a saved one."""

from __future__ import annotations

import hashlib
import itertools
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from bertcli.errors import ArtifactError, warn

if TYPE_CHECKING:
    from bertcli.masking import MaskingSpec

SPECIAL_ROLES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MODEL_MAX_LENGTH = 512


def build_normalizer(
    lowercase: bool, strip_accents: str, clean_text: bool = True, handle_chinese_chars: bool = True
) -> normalizers.Normalizer:
    """BERT's normalizer, with accent stripping that can spare non-Latin scripts.

    strip_accents "none" and "all" are plain BertNormalizers, so every loader (BertTokenizerFast included) rebuilds
    the same thing from tokenizer_config.json. "latin" decomposes, drops combining marks that follow a Latin
    letter, and recomposes (NFC), so Hangul syllables and kana voicing marks come back whole.
    """
    if strip_accents == "latin":
        return normalizers.Sequence(
            [
                normalizers.BertNormalizer(
                    clean_text=clean_text,
                    handle_chinese_chars=handle_chinese_chars,
                    strip_accents=False,
                    lowercase=False,
                ),
                normalizers.NFD(),
                normalizers.Replace(Regex(r"(?<=\p{Latin})\p{Mn}+"), ""),
                normalizers.NFC(),
            ]
            + ([normalizers.Lowercase()] if lowercase else [])
        )
    # strip_accents must be given explicitly: None would mean "strip whenever lowercasing" (BERT's default),
    # which splits Hangul into jamo.
    return normalizers.BertNormalizer(
        clean_text=clean_text,
        handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents == "all",
        lowercase=lowercase,
    )


def build_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Whitespace and punctuation splitting, as Google BERT's BasicTokenizer does."""
    return pre_tokenizers.BertPreTokenizer()


def build_tokenizer(
    vocab: list[str],
    *,
    lowercase: bool,
    strip_accents: str,
    clean_text: bool,
    handle_chinese_chars: bool,
    unk_token: str = "[UNK]",
    cls_token: str = "[CLS]",
    sep_token: str = "[SEP]",
    continuing_subword_prefix: str = "##",
    max_input_chars_per_word: int = 100,
) -> Tokenizer:
    """A greedy longest-match-first WordPiece tokenizer over `vocab` (ids = positions in the list)."""
    token_to_id = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(
        WordPiece(
            token_to_id,
            unk_token=unk_token,
            continuing_subword_prefix=continuing_subword_prefix,
            max_input_chars_per_word=max_input_chars_per_word,
        )
    )
    tok.normalizer = build_normalizer(lowercase, strip_accents, clean_text, handle_chinese_chars)
    tok.pre_tokenizer = build_pre_tokenizer()
    cls_id, sep_id = token_to_id[cls_token], token_to_id[sep_token]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix=continuing_subword_prefix)
    return tok


def canonical_order(tokens: Iterable[str], special_tokens: list[str], prefix: str = "##") -> list[str]:
    """A fixed id order for a token set: specials, then single characters, then ##characters, then the rest.

    Within each group tokens sort by code point, so two trainer runs that learn the same set give the same ids.
    """
    specials = list(special_tokens)
    rest = set(tokens) - set(specials)

    def key(t: str) -> tuple:
        cont = t.startswith(prefix) and len(t) > len(prefix)
        core = t[len(prefix) :] if cont else t
        return (len(core) > 1, cont, core)

    return specials + sorted(rest, key=key)


def save_tokenizer(
    tok: Tokenizer,
    out_dir: Path,
    *,
    lowercase: bool,
    strip_accents: str,
    handle_chinese_chars: bool,
    special_tokens: list[str],
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> None:
    """vocab.txt, tokenizer.json and the transformers config files, so AutoTokenizer loads the directory as is."""
    vocab = tok.get_vocab()
    ordered = sorted(vocab, key=vocab.__getitem__)
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in ordered), encoding="utf-8")
    tok.save(str(out_dir / "tokenizer.json"))
    roles = {f"{role}_token": token for role, token in SPECIAL_ROLES.items()}
    extra = [t for t in special_tokens if t not in SPECIAL_ROLES.values()]
    config: dict = {
        # BertTokenizer(Fast) rebuilds BertNormalizer from do_lower_case/strip_accents and would drop a custom
        # normalizer; the generic class keeps tokenizer.json's pipeline exactly.
        "tokenizer_class": "PreTrainedTokenizerFast" if strip_accents == "latin" else "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": {"none": False, "all": True, "latin": False}[strip_accents],
        "tokenize_chinese_chars": handle_chinese_chars,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        **roles,
    }
    if extra:
        config["additional_special_tokens"] = extra
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    special_map = dict(roles)
    if extra:
        special_map["additional_special_tokens"] = extra
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", "utf-8"
    )


@dataclass
class LoadedTokenizer:
    """A tokenizer directory, read: the `tokenizers` object, its special ids and an identity hash."""

    tokenizer: Tokenizer
    vocab_size: int
    special_ids: dict[str, int]
    hash: str
    path: Path
    max_length: int
    continuing_subword_prefix: str

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(set(self.special_ids.values()))

    def masking_spec(
        self,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        whole_word_mask: bool = False,
    ) -> MaskingSpec:
        """The MaskingSpec for this tokenizer: specials from it, the ## prefix from its model. The one builder that
        `bert mask`, dynamic masking in `bert pretrain` and `bert evaluate` share, so every path masks alike."""
        from bertcli.masking import spec_from_tokenizer  # numpy: `bert train-vocab` never needs it (memory)

        return spec_from_tokenizer(
            self.tokenizer,
            self.all_special_ids,
            self.special_ids["mask"],
            prefix=self.continuing_subword_prefix,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
            whole_word_mask=whole_word_mask,
        )


def tokenizer_hash(directory: Path) -> str:
    """Identity of a tokenizer: the vocabulary in id order and the normalization pipeline."""
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    identity = {
        "model": data.get("model"),
        "normalizer": data.get("normalizer"),
        "pre_tokenizer": data.get("pre_tokenizer"),
    }
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_tokenizer(directory: str | Path) -> LoadedTokenizer:
    """Load a tokenizer directory (ours or any Hugging Face BERT tokenizer with a tokenizer.json)."""
    d = Path(directory)
    hint = "make one with `bert train-vocab`, or point at a directory holding tokenizer.json"
    if not d.is_dir():
        raise ArtifactError(f"tokenizer directory '{d}' does not exist", hint=hint)
    if not (d / "tokenizer.json").is_file():
        raise ArtifactError(f"'{d}' is not a tokenizer directory (no tokenizer.json in it)", hint=hint)
    try:
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    except Exception as exc:  # the library raises plain Exceptions for malformed files
        raise ArtifactError(f"{d / 'tokenizer.json'}: cannot be read as a tokenizer ({exc})", hint=hint) from exc
    config: dict = {}
    if (d / "tokenizer_config.json").is_file():
        try:
            config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            config = {}
    special_ids: dict[str, int] = {}
    for role, default in SPECIAL_ROLES.items():
        token = config.get(f"{role}_token", default)
        if isinstance(token, dict):  # AddedToken serialised by transformers
            token = token.get("content", default)
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise ArtifactError(
                f"tokenizer '{d}' has no {token} token (needed as the {role} token)",
                hint="train the vocabulary with the default special_tokens",
            )
        special_ids[role] = token_id
    model = json.loads(tok.model.__getstate__()) if hasattr(tok.model, "__getstate__") else {}
    prefix = model.get("continuing_subword_prefix") or "##"
    max_length = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
    if not isinstance(max_length, int) or max_length > 1_000_000:  # transformers' "no limit" sentinel
        max_length = DEFAULT_MODEL_MAX_LENGTH
    return LoadedTokenizer(
        tokenizer=tok,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        special_ids=special_ids,
        hash=tokenizer_hash(d),
        path=d,
        max_length=max_length,
        continuing_subword_prefix=prefix,
    )


MOSTLY_UNKNOWN_SHARE = 0.5  # one text: most of it unreadable
CORPUS_UNKNOWN_SHARE = 0.05  # a corpus or a training file: a vocabulary trained on such text leaves well under 1%
_NFD_SAMPLE_TEXTS = 1000


def warn_if_mostly_unknown(unknown: int, total: int, what: str, tokenizer_dir: str | Path,
                           texts: Iterable[str] = (), limit: float = MOSTLY_UNKNOWN_SHARE) -> None:
    """More than `limit` of the tokens [UNK] (a tokenizer trained on another script, on decomposed text, or text of
    emoji and marks): a model learns, scores or classifies little but [UNK] there. Said, not refused: a few such
    inputs are deliberate. texts: the text (read lazily, the first thousand, and only when warning), to tell
    decomposed input (NFD) from a vocabulary that lacks the script."""
    share = unknown / max(total, 1)
    if share <= limit:
        return
    if _is_jamo_vocabulary(Path(tokenizer_dir)):
        advice = ("its vocabulary is of Hangul jamo, trained on decomposed text (NFD): compose that corpus to NFC and "
                  "train the vocabulary again (docs/korean.md)")
    elif _mostly_decomposed(itertools.islice(texts, _NFD_SAMPLE_TEXTS)):
        advice = ("the text is in decomposed Unicode (NFD: Hangul as jamo, as macOS copies it): compose it to NFC "
                  "first (docs/korean.md)")
    else:
        advice = "train a vocabulary on such text (bert train-vocab), or check limit_alphabet"
    warn(f"{share:.0%} of {what}'s tokens are [UNK] for the tokenizer of '{tokenizer_dir}'; {advice}")


def _mostly_decomposed(texts: Iterable[str]) -> bool:
    """Whether composing the texts (NFC) would change a twentieth of their characters or more: decomposed input
    (Hangul as jamo), not one accent among many words of another script."""
    before = after = 0
    for text in texts:
        before += len(text)
        after += len(unicodedata.normalize("NFC", text))
    return before - after >= 0.05 * max(before, 1)


def is_jamo_vocabulary(tokens: Iterable[str]) -> bool:
    """Pieces that spell Hangul as conjoining jamo (U+1100–U+11FF), more of them than of composed syllables: a
    vocabulary trained on decomposed (NFD) Korean, which reads composed text as [UNK]."""
    jamo = syllables = 0
    for token in tokens:
        jamo += any("\u1100" <= c <= "\u11ff" for c in token)
        syllables += any("\uac00" <= c <= "\ud7a3" for c in token)
    return jamo >= 10 and jamo > syllables  # NFC text has no conjoining jamo (but Old Hangul)


def _is_jamo_vocabulary(tokenizer_dir: Path) -> bool:
    """is_jamo_vocabulary of a tokenizer directory, unless its normalizer decomposes Hangul itself (strip_accents:
    all, or BERT's uncased default): its jamo are meant, and composed text reads fine."""
    try:
        lines = (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
        normalizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).normalizer
    except Exception:  # noqa: BLE001 - no vocab.txt or an unreadable tokenizer.json: nothing to say
        return False
    decomposes = normalizer is not None and normalizer.normalize_str("한") != "한"
    return not decomposes and is_jamo_vocabulary(lines)


def count_unknown(id_lists: Iterable[Sequence[int]], tokenizer: Any) -> tuple[int, int]:
    """([UNK] tokens, text tokens) in encodings of a transformers tokenizer, [CLS] and [SEP] left out."""
    if tokenizer.unk_token_id is None:
        return 0, 0
    frame = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    text_ids = [t for ids in id_lists for t in ids if t not in frame]
    return text_ids.count(tokenizer.unk_token_id), len(text_ids)


def copy_tokenizer_files(src: Path, dst: Path, max_positions: int | None = None) -> None:
    """Carry a tokenizer inside a later artifact, so every artifact is self-contained.

    max_positions: the model's position embeddings, beside which the tokenizer is saved. Its model_max_length is
    lowered to them: transformers truncates to model_max_length, and a pipeline(..., truncation=True) on a long
    text would otherwise feed a 64-position model 512 tokens and fail."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    config_path = dst / "tokenizer_config.json"
    if max_positions is not None and config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        current = config.get("model_max_length")
        if not isinstance(current, int) or current > max_positions:
            config["model_max_length"] = max_positions
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")


@dataclass
class BaseTokenizer:
    """An existing BERT tokenizer directory read for extension: its vocabulary in id order and the settings a
    tokenizer extending it must keep (the train-vocab keys of the same names)."""

    path: Path
    vocab: list[str]
    lowercase: bool
    strip_accents: str  # none, latin or all, as TrainVocabConfig.strip_accents
    clean_text: bool
    handle_chinese_chars: bool
    continuing_subword_prefix: str
    max_input_chars_per_word: int
    special_tokens: list[str]  # the five roles' tokens in SPECIAL_ROLES order, then any additional ones
    model_max_length: int

    @property
    def vocab_sha256(self) -> str:
        """sha256 of the vocabulary as vocab.txt holds it: one token a line, in id order."""
        return hashlib.sha256("".join(t + "\n" for t in self.vocab).encode("utf-8")).hexdigest()


def read_vocab_file(path: Path) -> list[str]:
    """The tokens of a vocab.txt in id order (one a line, split at \\n only, as transformers reads it)."""
    vocab = path.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    return vocab


def read_vocab(directory: Path) -> list[str] | None:
    """A tokenizer directory's vocabulary in id order: vocab.txt, else the WordPiece vocabulary of tokenizer.json
    (transformers 5 saves only that); None when it has neither (or ids with gaps)."""
    if (directory / "vocab.txt").is_file():
        return read_vocab_file(directory / "vocab.txt")
    try:
        model = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8")).get("model") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    vocab = model.get("vocab") if model.get("type") == "WordPiece" else None
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        return None
    return sorted(vocab, key=vocab.__getitem__)


def _normalizer_settings(normalizer: dict | None, where: Path) -> dict:
    """lowercase, strip_accents, clean_text, handle_chinese_chars of a tokenizer.json normalizer that
    build_normalizer makes (a BertNormalizer, or our Latin-only accent stripping)."""
    hint = "extend a BERT WordPiece tokenizer (its normalizer a BertNormalizer)"
    if not isinstance(normalizer, dict):
        raise ArtifactError(f"{where}: the tokenizer has no normalizer, so it is not a BERT one", hint=hint)
    if normalizer.get("type") == "BertNormalizer":
        lowercase = bool(normalizer.get("lowercase", True))
        strip = normalizer.get("strip_accents")
        strip = lowercase if strip is None else bool(strip)  # None: BERT's "strip whenever lowercasing"
        return {
            "lowercase": lowercase,
            "strip_accents": "all" if strip else "none",
            "clean_text": bool(normalizer.get("clean_text", True)),
            "handle_chinese_chars": bool(normalizer.get("handle_chinese_chars", True)),
        }
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else None
    types = [s.get("type") for s in steps or []]
    if types[:4] == ["BertNormalizer", "NFD", "Replace", "NFC"] and types[4:] in ([], ["Lowercase"]):
        return {  # build_normalizer's strip_accents "latin"
            "lowercase": types[4:] == ["Lowercase"],
            "strip_accents": "latin",
            "clean_text": bool(steps[0].get("clean_text", True)),
            "handle_chinese_chars": bool(steps[0].get("handle_chinese_chars", True)),
        }
    raise ArtifactError(f"{where}: normalizer {types or normalizer.get('type')} is not one bertcli can rebuild",
                        hint=hint)


def read_base_tokenizer(directory: str | Path) -> BaseTokenizer:
    """Read a tokenizer directory to extend: ours, or a Hugging Face BERT one as BertTokenizer(Fast).save_pretrained
    writes it (tokenizer.json, or vocab.txt with tokenizer_config.json). Ids: vocab.txt's lines, else
    tokenizer.json's."""
    d = Path(directory)
    hint = "point extend_from at a directory written by `bert train-vocab` or a BERT tokenizer's save_pretrained"
    if not d.is_dir():
        raise ArtifactError(f"extend_from '{d}' does not exist or is not a directory", hint=hint)
    vocab = read_vocab(d)
    if vocab is None:
        raise ArtifactError(f"extend_from '{d}' has no vocab.txt or WordPiece tokenizer.json, so its ids are unknown",
                            hint=hint)
    if len(set(vocab)) != len(vocab) or "" in vocab:
        raise ArtifactError(f"'{d}': a token of its vocabulary is empty or listed twice", hint=hint)

    def read_json(name: str) -> dict:
        try:
            return json.loads((d / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{d / name}: not valid JSON ({exc})", hint=hint) from exc

    config: dict = read_json("tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    model: dict = {}
    if (d / "tokenizer.json").is_file():
        data = read_json("tokenizer.json")
        model = data.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ArtifactError(f"{d / 'tokenizer.json'}: a {model.get('type')} model, not WordPiece", hint=hint)
        if model.get("vocab") != {t: i for i, t in enumerate(vocab)}:
            raise ArtifactError(f"'{d}': tokenizer.json and vocab.txt disagree on the vocabulary", hint=hint)
        beyond = [a.get("content") for a in data.get("added_tokens") or [] if a.get("id", 0) >= len(vocab)]
        if beyond:
            raise ArtifactError(
                f"'{d}': {len(beyond)} added token(s) beyond the vocabulary ({', '.join(map(str, beyond[:3]))}) would "
                "collide with the appended ids", hint="save the tokenizer without added tokens",
            )
        settings = _normalizer_settings(data.get("normalizer"), d / "tokenizer.json")
    elif config:
        lowercase = bool(config.get("do_lower_case", True))  # BertTokenizer's defaults
        strip = config.get("strip_accents")
        settings = {
            "lowercase": lowercase,
            "strip_accents": "all" if (lowercase if strip is None else strip) else "none",
            "clean_text": True,
            "handle_chinese_chars": bool(config.get("tokenize_chinese_chars", True)),
        }
    else:
        raise ArtifactError(f"'{d}': neither tokenizer.json nor tokenizer_config.json says how it normalizes text",
                            hint=hint)
    specials = []
    for role, default in SPECIAL_ROLES.items():
        token = config.get(f"{role}_token", default)
        token = token.get("content", default) if isinstance(token, dict) else token
        if token != default or token not in vocab:  # train-vocab's tokenizers use BERT's names for the roles
            raise ArtifactError(f"'{d}': its {role} token is {token!r}, not {default} in vocab.txt", hint=hint)
        specials.append(token)
    extra = [t.get("content") if isinstance(t, dict) else t for t in config.get("additional_special_tokens") or []]
    max_length = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
    if not isinstance(max_length, int) or max_length > 1_000_000:  # transformers' "no limit" sentinel
        max_length = DEFAULT_MODEL_MAX_LENGTH
    return BaseTokenizer(
        path=d,
        vocab=vocab,
        continuing_subword_prefix=model.get("continuing_subword_prefix") or "##",
        max_input_chars_per_word=int(model.get("max_input_chars_per_word") or 100),
        special_tokens=specials + [t for t in extra if t in vocab and t not in specials],
        model_max_length=max_length,
        **settings,
    )

"""One dataclass per stage: the schema of its YAML file, a docstring under every field (no torch import here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

Layout = Literal["sentence-per-line", "document-per-line"]
CorpusFormat = Literal["auto", "text", "jsonl", "parquet", "arrow"]
DecodeErrors = Literal["strict", "replace"]

# Upper bounds for keys that size memory or loops: far above any real use, low enough that a typo (an extra 0s)
# is an error rather than a 70 GB allocation or a crash after an hour.
MAX_SEED = 2**32 - 1  # numpy and torch seeds are 32-bit here
MAX_VOCAB_SIZE = 1 << 20
MAX_POSITIONS = 1 << 13

DEFAULT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Key roles live in each field's metadata["roles"]: "execution" keys change how a stage runs but not what it
# writes (left out of its config hash); "resumable" keys may change between a pretraining run and its --resume.
# bertcli.config.keys_with_role reads them.


def language_problems(language: str) -> list[str]:
    """A sentence-splitting language must look like a language code: the splitter (sentencex) falls back to
    English rules for a code it does not know, silently, so a typo would go unnoticed."""
    if language == "auto" or re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?", language):
        return []
    return [f"key 'language': {language!r} is not a language code; use auto or an ISO 639 code such as en, ko, ja"]


@dataclass
class TrainVocabConfig:
    """`bert train-vocab`: corpus → WordPiece tokenizer directory."""

    input: list[str] = field(default_factory=list, metadata={"roles": ("execution",)})
    """Corpus files, directories (read recursively) or glob patterns: text (.txt, .gz, .zst), .jsonl, .parquet,
    .arrow, or a Hugging Face save_to_disk directory. A directory's hidden files, .json files and bertcli artifact
    directories are skipped (see docs/corpora.md)."""
    output: str = field(default="runs/tokenizer", metadata={"roles": ("execution",)})
    """Directory to write the tokenizer to (refused if it exists, unless --overwrite)."""
    layout: Layout = "sentence-per-line"
    """sentence-per-line: one sentence a line, blank line between documents (Google BERT's format);
    document-per-line: one document a line, split into sentences with the sentencex library. A JSON line or a
    Parquet/Arrow row is one document either way: its text is split at line breaks, or by sentencex."""
    format: CorpusFormat = "auto"
    """auto picks by the file name: .jsonl (.gz/.zst) JSON lines, .parquet Parquet, .arrow Arrow IPC, anything else
    text (gzip and zstd are recognised by their magic bytes); or force text, jsonl, parquet or arrow."""
    text_field: str = "text"
    """The JSON key or Parquet/Arrow column holding each document's text (a string, or a list of its sentences)."""
    language: str = "auto"
    """Language code for sentence splitting in document-per-line layout (e.g. en, ko, ja); auto guesses per document."""
    errors: DecodeErrors = "strict"
    """strict: invalid UTF-8 is an error naming file and line; replace: invalid bytes become U+FFFD."""
    vocab_size: int = field(default=30522, metadata={"ge": 1, "le": MAX_VOCAB_SIZE})
    """Size of the vocabulary, special tokens included: the most it learns. A corpus with fewer pieces that occur
    min_frequency times gives fewer, and train-vocab warns (the manifest keeps both numbers)."""
    min_frequency: int = field(default=2, metadata={"ge": 0})
    """A pair must occur at least this often to be merged; 0 means no limit."""
    limit_alphabet: int = field(default=1000, metadata={"ge": 0, "le": MAX_VOCAB_SIZE})
    """Keep at most this many distinct characters in the initial alphabet (most frequent first); 0 means no limit.
    For algorithm wordpiece, words holding another character are left out of training (they would be [UNK])."""
    lowercase: bool = True
    """Lowercase the text before splitting it into words."""
    strip_accents: Literal["none", "latin", "all"] = "none"
    """none: keep accents (Hangul, kana and CJK stay whole); latin: strip accents from Latin-script letters only,
    then NFC; all: BERT's NFD-and-drop-marks, which also breaks Hangul syllables into jamo and drops kana voicing
    marks. `false`/`true` are read as none/all."""
    clean_text: bool = True
    """Remove control characters and turn every whitespace character into a plain space."""
    handle_chinese_chars: bool = True
    """Put spaces around CJK ideographs so each becomes its own word (as Google BERT does)."""
    special_tokens: list[str] = field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))
    """Special tokens, given the first ids in this order. Must include [PAD], [UNK], [CLS], [SEP] and [MASK]."""
    continuing_subword_prefix: str = "##"
    """Prefix marking a piece that continues a word."""
    max_input_chars_per_word: int = field(default=100, metadata={"ge": 1, "le": 10_000})
    """Words longer than this are encoded as [UNK] (BERT's rule)."""
    algorithm: Literal["bpe", "wordpiece"] = "wordpiece"
    """wordpiece: our deterministic trainer (byte-identical vocabularies), merging by `score`; bpe: the
    `tokenizers` library's WordPiece trainer (merges by pair count; fastest on very large corpora, not
    bit-reproducible). See docs/wordpiece.md for why wordpiece with score count is the default."""
    score: Literal["count", "likelihood", "textbook"] = "count"
    """For algorithm wordpiece: count = the pair count (BPE's criterion; measured best, see docs/benchmarks.md);
    likelihood = exact gain in the corpus's unigram log-likelihood; textbook = freq(ab)/(freq(a)·freq(b))."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Most processes that count words (algorithm wordpiece; this one included): one per 12 MB of input, since a
    process costs ~45 MB of memory and half a second to start (docs/benchmarks.md)."""
    executor: Literal["local", "ray"] = field(default="local", metadata={"roles": ("execution",)})
    """Where algorithm wordpiece counts words: local (num_workers processes here) or ray (chunks of the corpus as
    tasks on a Ray cluster, counts merged in corpus order; needs `pip install 'bertcli[ray]'`, see
    docs/distributed.md). The vocabulary is byte-identical either way."""
    ray_address: Optional[str] = field(default=None, metadata={"roles": ("execution",)})
    """executor ray: null starts a local Ray instance of num_workers CPUs (or joins $RAY_ADDRESS if set); auto
    joins the cluster this machine is a node of; ray://HOST:10001 joins one through Ray Client."""
    max_retries: int = field(default=3, metadata={"roles": ("execution",), "ge": 0})
    """executor ray: times a failed task is retried (a worker or node that died, an OSError); bad input is not."""
    seed: int = field(default=0, metadata={"ge": 0, "le": MAX_SEED})
    """Recorded in the manifest; the trainers themselves use no randomness."""
    extend_from: Optional[str] = None
    """Domain adaptation: an existing BERT tokenizer directory (ours, or a Hugging Face one with vocab.txt) whose
    every token keeps its id; up to extra_tokens WordPiece tokens learned from the corpus are appended (see
    docs/domain-adaptation.md). Its normalization, prefix and special tokens are kept: those keys must stay at their
    defaults or agree with it, and vocab_size is not used. algorithm wordpiece only."""
    extra_tokens: int = field(default=0, metadata={"ge": 0, "le": MAX_VOCAB_SIZE})
    """With extend_from: the most tokens to append (new characters of the corpus first, most frequent first, then
    the trainer's merges in the order its score chose them; none the old vocabulary already has)."""

    def validate(self) -> list[str]:
        problems = []
        if not self.input:
            problems.append("key 'input': no corpus given; pass --input PATH or set input in the config")
        if self.extend_from is not None and self.extra_tokens == 0:
            problems.append("key 'extra_tokens': extend_from needs the number of tokens to append, e.g. "
                            "--set extra_tokens=2000")
        if self.extend_from is None and self.extra_tokens:
            problems.append("key 'extra_tokens': only used with extend_from (the tokenizer directory to extend)")
        if self.extend_from is not None and self.algorithm != "wordpiece":
            problems.append("key 'algorithm': extend_from ranks candidates with our trainer's score; use wordpiece")
        missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in self.special_tokens]
        if missing:
            problems.append(f"key 'special_tokens': {self.special_tokens} lacks {', '.join(missing)}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            problems.append(f"key 'special_tokens': {self.special_tokens} has duplicates")
        if not self.continuing_subword_prefix:
            problems.append("key 'continuing_subword_prefix': must not be empty")
        if self.executor == "ray" and self.algorithm == "bpe":
            problems.append("key 'executor': ray runs algorithm wordpiece's word counting; algorithm bpe trains in "
                            "this process (its trainer is multi-threaded)")
        if self.vocab_size <= len(self.special_tokens):
            problems.append(
                f"key 'vocab_size': {self.vocab_size} leaves no room beside the {len(self.special_tokens)} special "
                "tokens; raise it (30522 is BERT's)"
            )
        problems.extend(language_problems(self.language))
        return problems


@dataclass
class PairsConfig:
    """`bert pairs`: corpus + tokenizer → NSP sentence-pair artifact (Google BERT's semantics)."""

    input: list[str] = field(default_factory=list, metadata={"roles": ("execution",)})
    """Corpus files, directories or glob patterns (as for train-vocab)."""
    tokenizer: str = field(default="runs/tokenizer", metadata={"roles": ("execution",)})
    """Tokenizer directory made by `bert train-vocab` (or any Hugging Face BERT tokenizer directory)."""
    output: str = field(default="runs/pairs", metadata={"roles": ("execution",)})
    """Directory to write the pairs artifact to."""
    layout: Layout = "sentence-per-line"
    """sentence-per-line or document-per-line (see train-vocab)."""
    format: CorpusFormat = "auto"
    """auto, text, jsonl, parquet or arrow (see train-vocab)."""
    text_field: str = "text"
    """The JSON key or Parquet/Arrow column holding each document's text (see train-vocab)."""
    language: str = "auto"
    """Language code for sentence splitting in document-per-line layout."""
    errors: DecodeErrors = "strict"
    """strict or replace (see train-vocab)."""
    max_seq_length: int = field(default=128, metadata={"ge": 8, "le": MAX_POSITIONS})
    """Tokens per sequence, [CLS] and [SEP]s included."""
    short_seq_prob: float = field(default=0.1, metadata={"ge": 0.0, "le": 1.0})
    """Probability of a shorter target length (random, from 2 up) for a chunk, so the model sees short inputs too."""
    nsp_probability: float = field(default=0.5, metadata={"ge": 0.0, "le": 1.0})
    """Probability that segment B is a random span from another document (label NotNext)."""
    nsp: bool = True
    """false: no sentence pairs; pack contiguous sentences into full-length single segments (MLM only)."""
    dupe_factor: int = field(default=1, metadata={"ge": 1, "le": 1000})
    """Passes over the corpus, each with different pairings."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Processes; the output is byte-identical for any count."""
    executor: Literal["local", "ray"] = field(default="local", metadata={"roles": ("execution",)})
    """local: this machine builds the artifact (or part shard_index of num_shards); ray: the num_shards parts run
    as tasks on a Ray cluster and are merged into output, byte-identical to local (needs `pip install
    'bertcli[ray]'`, see docs/distributed.md)."""
    ray_address: Optional[str] = field(default=None, metadata={"roles": ("execution",)})
    """executor ray: null starts a local Ray instance of num_workers CPUs (or joins $RAY_ADDRESS if set); auto
    joins the cluster this machine is a node of; ray://HOST:10001 joins one through Ray Client."""
    max_retries: int = field(default=3, metadata={"roles": ("execution",), "ge": 0})
    """executor ray: times a failed task is retried (a worker or node that died, an OSError); bad input is not."""
    shard_index: int = field(default=0, metadata={"ge": 0})
    """Which part this job builds when the work is split into num_shards independent jobs."""
    num_shards: int = field(default=1, metadata={"ge": 1, "le": 100_000})
    """Number of independent jobs the work is split into (`bert pairs --set shard_index=…` on each)."""
    sequences_per_shard: int = field(default=65536, metadata={"ge": 1, "le": 1 << 24})
    """Sequences per on-disk shard file."""
    seed: int = field(default=12345, metadata={"ge": 0, "le": MAX_SEED})
    """Seed of every random choice; the same seed gives byte-identical output."""

    def validate(self) -> list[str]:
        problems = []
        if not self.input:
            problems.append("key 'input': no corpus given; pass --input PATH or set input in the config")
        if self.shard_index >= self.num_shards:
            problems.append(
                f"key 'shard_index': got {self.shard_index}, expected a value < num_shards ({self.num_shards})"
            )
        if self.executor == "ray" and self.shard_index:
            problems.append(
                f"key 'shard_index': {self.shard_index} names one job of a split run, but executor ray runs all "
                "num_shards of them; leave shard_index at 0"
            )
        if not self.nsp and self.dupe_factor > 1:
            problems.append(
                f"key 'dupe_factor': {self.dupe_factor} with nsp: false would write identical copies (packing is not "
                "random); set dupe_factor: 1 and use `bert mask`'s dupe_factor or dynamic masking for variety"
            )
        problems.extend(language_problems(self.language))
        return problems


@dataclass
class MaskConfig:
    """`bert mask`: pairs artifact → statically masked artifact (MLM)."""

    input: str = field(default="runs/pairs", metadata={"roles": ("execution",)})
    """Pairs artifact made by `bert pairs`."""
    output: str = field(default="runs/masked", metadata={"roles": ("execution",)})
    """Directory to write the masked artifact to."""
    masked_lm_prob: float = field(default=0.15, metadata={"gt": 0.0, "lt": 1.0})
    """Share of candidate tokens (every token but the tokenizer's special ones, [UNK] among them) selected for
    prediction."""
    max_predictions_per_seq: int = field(default=20, metadata={"ge": 1, "le": MAX_POSITIONS})
    """Cap on the selected tokens per sequence."""
    mask_token_prob: float = field(default=0.8, metadata={"ge": 0.0, "le": 1.0})
    """Share of selected tokens replaced by [MASK]."""
    random_token_prob: float = field(default=0.1, metadata={"ge": 0.0, "le": 1.0})
    """Share of selected tokens replaced by a random non-special token (the rest stay unchanged)."""
    whole_word_mask: bool = False
    """Select whole words (a piece and its following ## pieces) instead of single pieces."""
    dupe_factor: int = field(default=1, metadata={"ge": 1, "le": 1000})
    """Copies of every sequence, each with a different mask."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Threads (masking is numpy work that runs outside the GIL); the output is byte-identical for any count."""
    executor: Literal["local", "ray"] = field(default="local", metadata={"roles": ("execution",)})
    """local: num_workers threads here; ray: blocks of sequences as tasks on a Ray cluster, written here in order,
    byte-identical to local (needs `pip install 'bertcli[ray]'`, see docs/distributed.md)."""
    ray_address: Optional[str] = field(default=None, metadata={"roles": ("execution",)})
    """executor ray: null starts a local Ray instance of num_workers CPUs (or joins $RAY_ADDRESS if set); auto
    joins the cluster this machine is a node of; ray://HOST:10001 joins one through Ray Client."""
    max_retries: int = field(default=3, metadata={"roles": ("execution",), "ge": 0})
    """executor ray: times a failed task is retried (a worker or node that died, an OSError); bad input is not."""
    seed: int = field(default=12345, metadata={"ge": 0, "le": MAX_SEED})
    """Seed of every random choice."""

    def validate(self) -> list[str]:
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            return [
                f"keys 'mask_token_prob' + 'random_token_prob': {self.mask_token_prob} + {self.random_token_prob}"
                " is above 1"
            ]
        return []


@dataclass
class ModelConfig:
    """The model: a preset of Google's sizes and/or BertConfig's own fields (a field set here wins)."""

    preset: Optional[Literal["tiny", "mini", "small", "medium", "base", "large"]] = "base"
    """tiny 2/128, mini 4/256, small 4/512, medium 8/512, base 12/768, large 24/1024 (layers/hidden);
    heads = hidden/64, intermediate = 4·hidden. null: give every size field yourself."""
    hidden_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 1 << 16})
    """Width of the hidden states (BertConfig.hidden_size)."""
    num_hidden_layers: Optional[int] = field(default=None, metadata={"ge": 1, "le": 1 << 16})
    """Transformer layers."""
    num_attention_heads: Optional[int] = field(default=None, metadata={"ge": 1, "le": 1 << 16})
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 1 << 16})
    """Width of the feed-forward layer."""
    hidden_act: Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "tanh", "mish"] = "gelu"
    """Activation of the feed-forward layer."""
    hidden_dropout_prob: float = field(default=0.1, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout on embeddings and hidden states."""
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout on attention probabilities."""
    max_position_embeddings: int = field(default=512, metadata={"ge": 8, "le": MAX_POSITIONS})
    """Longest sequence the model can take; must be at least the data's max_seq_length."""
    type_vocab_size: int = field(default=2, metadata={"ge": 1, "le": 16})
    """Number of segment (token type) ids."""
    initializer_range: float = field(default=0.02, metadata={"gt": 0.0})
    """Standard deviation of the truncated-normal weight initialisation."""
    layer_norm_eps: float = field(default=1e-12, metadata={"gt": 0.0})
    """Epsilon of the LayerNorms."""


@dataclass
class PretrainConfig:
    """`bert pretrain`: masked or pairs artifact → BertForPreTraining checkpoints."""

    data: str = field(default="runs/masked", metadata={"roles": ("execution", "resumable")})
    """A masked artifact (static masking) or a pairs artifact (dynamic masking at train time)."""
    output: str = field(default="runs/pretrain", metadata={"roles": ("execution", "resumable")})
    """Run directory: metrics.jsonl, step-XXXXXXXX/ checkpoints, final/."""
    seed: int = field(default=42, metadata={"ge": 0, "le": MAX_SEED})
    """Seed of initialisation, data order, dropout and dynamic masking."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model's size and shape."""
    init_from: Optional[str] = None
    """Start from an existing Hugging Face BERT directory instead of random weights (missing heads are initialised).
    Its vocabulary must be the data's or a prefix of it (a tokenizer extended with train-vocab's extend_from): the
    model then grows to the data's vocabulary, each new row the mean of its old pieces' rows, a token no old piece
    spells drawn like an old row (docs/domain-adaptation.md)."""
    mlm_bias_init: Literal["unigram", "zero"] = "unigram"
    """Initial MLM output bias of a new model. unigram: the log frequency of each token among the training data's
    prediction targets (counted on up to 50M tokens), so training starts from the frequency guess a model otherwise
    spends its first hundreds of steps learning (Meister et al. 2023, "A Natural Bias for Language Generation
    Models"); zero: BertForPreTraining's own. Not applied to weights from init_from."""
    max_steps: int = field(default=10000, metadata={"roles": ("resumable",), "ge": 1})
    """Optimizer steps to train for."""
    time_budget_s: Optional[float] = field(default=None, metadata={"roles": ("resumable",), "gt": 0.0})
    """Stop after this many seconds of training and fit the LR schedule to it (null: no limit)."""
    batch_size: int = field(default=256, metadata={"ge": 1})
    """Global batch size in sequences per optimizer step, over all processes (a multiple of their number)."""
    micro_batch_size: int = field(default=32, metadata={"ge": 1})
    """The most sequences per forward pass on one process (what fits in memory). The micro-batch is the largest
    divisor of batch_size / processes not above it; gradient accumulation makes up the rest, so batch_size can
    change (or the process count) without touching this."""
    learning_rate: float = field(default=1e-4, metadata={"gt": 0.0})
    """Peak learning rate of AdamW."""
    weight_decay: float = field(default=0.01, metadata={"ge": 0.0})
    """AdamW weight decay (never applied to LayerNorm weights and biases)."""
    adam_beta1: float = field(default=0.9, metadata={"ge": 0.0, "lt": 1.0})
    """AdamW beta1."""
    adam_beta2: float = field(default=0.999, metadata={"ge": 0.0, "lt": 1.0})
    """AdamW beta2."""
    adam_epsilon: float = field(default=1e-6, metadata={"gt": 0.0})
    """AdamW epsilon."""
    warmup_steps: int = field(default=1000, metadata={"ge": 0})
    """Steps of linear warmup from 0 to learning_rate."""
    lr_schedule: Literal["linear", "cosine", "constant", "wsd"] = "linear"
    """Decay after warmup: linear or cosine to 0, constant, or wsd (warmup-stable-decay: the peak, then linear to 0
    over the last lr_decay_fraction of training)."""
    lr_decay_fraction: float = field(default=0.2, metadata={"gt": 0.0, "le": 1.0})
    """lr_schedule wsd: the share of training (of max_steps, or of time_budget_s) at its end over which the
    learning rate falls to 0."""
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0.0})
    """Clip the gradient's global norm to this (0: no clipping)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on a GPU that computes bf16 natively (compute capability 8.0 and above), fp16 with a
    gradient scaler on older GPUs (V100, T4), fp32 on CPU; fp16 always uses a gradient scaler."""
    compile: bool = field(default=False, metadata={"roles": ("resumable",)})
    """torch.compile the training step (one graph per length bucket; a minute or more at start). 1.23× the
    eager speed of BERT-base on an H200 (benchmarks.md); off by default so a first run does not wait on compilation:
    turn it on for GPU runs longer than a few minutes. Changes only float rounding, and with dropout the random
    stream (Inductor draws its own), so a resume that switches it is not bit-identical to an uninterrupted run."""
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"roles": ("resumable",)})
    """auto: cuda when available, else cpu. cuda without a usable GPU is refused."""
    ddp_comm: Literal["fp32", "bf16"] = field(default="fp32", metadata={"roles": ("resumable",)})
    """Several processes: the dtype gradients are all-reduced in. bf16 sends half the bytes (DDP's bf16 compression
    hook) and rounds each rank's gradient to bf16 before the sum."""
    peak_tflops: Optional[float] = field(default=None, metadata={"roles": ("execution", "resumable"), "gt": 0.0})
    """The device's dense peak in TFLOP/s for the mfu column of metrics.jsonl (null: from the GPU's name, see
    docs/pretraining.md; none on CPU)."""
    masked_lm_prob: float = field(default=0.15, metadata={"gt": 0.0, "lt": 1.0})
    """Dynamic masking only (pairs artifact): share of candidate tokens selected. The held-out evaluation always
    masks 15%, so runs at different rates compare."""
    max_predictions_per_seq: int = field(default=20, metadata={"ge": 1, "le": MAX_POSITIONS})
    """Dynamic masking only: cap on selected tokens per sequence (about 15% of max_seq_length: 20 at 128, 80 at
    512). Also the width of the step's prediction slots."""
    whole_word_mask: bool = False
    """Dynamic masking only: select whole words."""
    eval_fraction: float = field(default=0.01, metadata={"ge": 0.0, "lt": 1.0})
    """Share of sequences held out for evaluation: a fixed hash of each sequence's index picks them, the same
    sequences whatever the seed, so runs of different seeds are evaluated alike."""
    eval_every: int = field(default=1000, metadata={"roles": ("resumable",), "ge": 0})
    """Evaluate every this many steps (0: only at the end)."""
    eval_batches: int = field(default=20, metadata={"roles": ("resumable",), "ge": 1})
    """Micro-batches per evaluation."""
    save_every: int = field(default=1000, metadata={"roles": ("resumable",), "ge": 0})
    """Write a checkpoint every this many steps (0: only final/)."""
    keep_checkpoints: int = field(default=3, metadata={"roles": ("resumable",), "ge": 1})
    """Keep the newest this many step checkpoints."""
    log_every: int = field(default=10, metadata={"roles": ("resumable",), "ge": 1})
    """Write a metrics.jsonl line every this many steps."""
    num_workers: Union[Literal["auto"], int] = field(default="auto", metadata={"roles": ("execution", "resumable"),
                                                                               "ge": 0})
    """DataLoader worker processes (0: load in the training process). auto: 2 on CUDA, 0 on CPU."""
    num_threads: Union[Literal["auto"], int] = field(default="auto", metadata={"roles": ("execution", "resumable"),
                                                                               "ge": 1})
    """CPU threads of torch in each process. auto: torch's default (OMP_NUM_THREADS, else every core), except on a CPU
    whose cores other jobs keep busy (measured over 0.3 s at the start; the 1-minute load average where the OS cannot
    tell): the cores they leave idle, at least 1."""
    on_nonfinite: Literal["rollback", "stop"] = field(default="rollback", metadata={"roles": ("resumable",)})
    """On a NaN/inf loss: roll back to the last checkpoint and skip the offending batches, or stop."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(
        default_factory=lambda: ["tensorboard"], metadata={"roles": ("resumable",)}
    )
    """Experiment trackers besides metrics.jsonl (always written): tensorboard (event files in RUN/tensorboard),
    wandb (Weights & Biases; `pip install 'bertcli[wandb]'`; WANDB_MODE=offline works without network). Each gets
    the metrics, the run's config with the data and tokenizer hashes, and the final evaluation as its summary."""
    wandb_project: str = field(default="bertcli", metadata={"roles": ("resumable",)})
    """The W&B project of the run (report_to: wandb); the run is named after the output directory, and --resume
    continues the same W&B run."""

    def validate(self) -> list[str]:
        problems = []
        m = self.model
        if m.preset is None and None in (m.hidden_size, m.num_hidden_layers, m.num_attention_heads):
            problems.append(
                "key 'model': with preset null, set model.hidden_size, model.num_hidden_layers and "
                "model.num_attention_heads"
            )
        if m.hidden_size and m.num_attention_heads and m.hidden_size % m.num_attention_heads:
            problems.append(
                f"key 'model.num_attention_heads': {m.num_attention_heads} does not divide "
                f"model.hidden_size {m.hidden_size}"
            )
        return problems


# ---------------------------------------------------------------- the stage registry


@dataclass(frozen=True)
class StageInput:
    """A path key of a stage's config that `bert run` fills with the output of a stage before it."""

    key: str
    """The config key, e.g. pairs' `tokenizer`."""
    stages: tuple[str, ...]
    """The stages whose output it takes, preferred first: the first of them that comes earlier in the pipeline,
    else the first one's directory in the workdir."""
    recorded_as: str
    """Where the stage's manifest records it: manifest["inputs"][recorded_as]."""
    kind: Literal["artifact", "tokenizer"] = "artifact"
    """artifact: identified by its manifest's content_hash; tokenizer: by vocab.tokenizer_hash (recorded as hash)."""
    what: str = ""
    """Its name in `bert run`'s messages ("its tokenizer changed")."""


@dataclass(frozen=True)
class StageSpec:
    """Everything the pipeline, the artifact readers and `bert config show` need to know about one stage."""

    name: str
    """The command and the name in a pipeline's `stages:` list, e.g. train-vocab."""
    schema: type
    """Its config dataclass."""
    section: str
    """The key of its section in a pipeline YAML."""
    workdir_subdir: str
    """Where `bert run` writes its output under the workdir."""
    manifest_stage: str
    """The `stage` its manifest.json records."""
    module: str
    """The module whose `run(cfg, overwrite=…)` builds the output (imported only when the stage runs)."""
    reads_corpus: bool = False
    """Takes the pipeline's `input` (the corpus) as its own `input`."""
    inputs: tuple[StageInput, ...] = ()
    """Path keys filled with the outputs of stages before it."""
    resumable: bool = False
    """`run` also takes resume=; an unfinished output with the same config is resumed, not rebuilt."""
    model_subdir: Optional[str] = None
    """The model a finished run leaves, relative to its output (pretrain: final)."""

    @property
    def command(self) -> str:
        return f"bert {self.name}"


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("train-vocab", TrainVocabConfig, "train_vocab", "tokenizer", "train-vocab",
                  "bertcli.stages.train_vocab", reads_corpus=True),
        StageSpec("pairs", PairsConfig, "pairs", "pairs", "pairs", "bertcli.stages.pairs", reads_corpus=True,
                  inputs=(StageInput("tokenizer", ("train-vocab",), "tokenizer", "tokenizer", "tokenizer"),)),
        StageSpec("mask", MaskConfig, "mask", "masked", "masked", "bertcli.stages.mask",
                  inputs=(StageInput("input", ("pairs",), "pairs", "artifact", "pairs artifact"),)),
        StageSpec("pretrain", PretrainConfig, "pretrain", "pretrain", "pretrain", "bertcli.stages.pretrain",
                  # without a mask stage, pretrain masks the pairs artifact on the fly (dynamic masking)
                  inputs=(StageInput("data", ("mask", "pairs"), "data", "artifact", "training data"),),
                  resumable=True, model_subdir="final"),
    )
}
"""The stages `bert run` can chain, in pipeline order. Adding one = an entry here (and a section in PipelineConfig)
plus its module with `run(cfg, overwrite=…) -> manifest`."""

PipelineStage = Literal[tuple(STAGES)]  # type: ignore[valid-type]


def stage_of_manifest(manifest_stage: str) -> Optional[StageSpec]:
    """The stage whose manifest records `manifest_stage` (None for an unknown one)."""
    return next((spec for spec in STAGES.values() if spec.manifest_stage == manifest_stage), None)


@dataclass
class PipelineConfig:
    """`bert run`: one YAML that drives train-vocab → pairs → mask → pretrain in order."""

    workdir: Optional[str] = None
    """Directory under which each stage's artifact is written (tokenizer/, pairs/, masked/, pretrain/). null:
    runs/NAME, NAME being the pipeline YAML's file name without .yaml or .yml (no longer the demo's runs/demo)."""
    input: list[str] = field(default_factory=list)
    """Corpus files, directories or glob patterns for train-vocab and pairs."""
    stages: list[PipelineStage] = field(default_factory=lambda: list(STAGES))
    """Stages to run, in this order. Leave out mask to train with dynamic masking on the pairs artifact; leave out
    train-vocab to use an existing tokenizer (set pairs: {tokenizer: DIR})."""
    seed: Optional[int] = field(default=None, metadata={"ge": 0, "le": MAX_SEED})
    """If set, the seed of every stage that has none of its own in its section."""
    train_vocab: dict = field(default_factory=dict)
    """Keys of the train-vocab config (`bert config show train-vocab`); input and output are filled in."""
    pairs: dict = field(default_factory=dict)
    """Keys of the pairs config; input, tokenizer and output are filled in from the stages before it."""
    mask: dict = field(default_factory=dict)
    """Keys of the mask config; input and output are filled in."""
    pretrain: dict = field(default_factory=dict)
    """Keys of the pretrain config, nested ones as mappings (model: {preset: tiny}); data and output are filled
    in."""

    def validate(self) -> list[str]:
        problems = []
        if len(set(self.stages)) != len(self.stages):
            problems.append(f"key 'stages': {self.stages} names a stage twice")
        order = list(STAGES)
        if [s for s in order if s in self.stages] != list(self.stages):
            problems.append(f"key 'stages': {self.stages} is out of order; the order is {' → '.join(order)}")
        if not self.stages:
            problems.append("key 'stages': empty; name at least one stage")
        if not self.input and ({"train-vocab", "pairs"} & set(self.stages)):
            problems.append("key 'input': no corpus given; set input to the corpus files")
        return problems




@dataclass
class FinetuneConfig:
    """`bert finetune`: a BERT + a labelled file → a sequence classifier (AutoModelForSequenceClassification)."""

    model: str = field(default="runs/pretrain", metadata={"roles": ("execution",)})
    """The BERT to start from: a `bert pretrain` run (its final/ is used), run/final, or any Hugging Face BERT
    directory with its tokenizer."""
    train: str = field(default="", metadata={"roles": ("execution",)})
    """Training examples: a .csv or .tsv file with a header line, or .jsonl (one JSON object a line)."""
    dev: Optional[str] = field(default=None, metadata={"roles": ("execution",)})
    """Dev examples in the same form (null: hold out dev_fraction of the training file)."""
    output: str = field(default="runs/finetune", metadata={"roles": ("execution",)})
    """Directory to write the fine-tuned model to (loads with AutoModelForSequenceClassification and
    pipeline("text-classification"))."""
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    """auto: by the files' suffix (.csv, .tsv, .jsonl or .json); or force one format for both files."""
    text_field: Optional[str] = None
    """The column (CSV/TSV header) or key (JSONL) holding the text; null: `sentence` if present, else `text`."""
    text_pair_field: Optional[str] = None
    """The second text of a sentence-pair task (e.g. hypothesis); null: single-sentence classification."""
    label_field: str = "label"
    """The column or key holding the label: a string, or an integer class id."""
    dev_fraction: float = field(default=0.1, metadata={"gt": 0.0, "lt": 1.0})
    """Share of each label's training examples held out as dev set when no dev file is given (stratified: the
    dev set keeps the file's label mix; the same split for every seed)."""
    max_seq_length: int = field(default=128, metadata={"ge": 8, "le": MAX_POSITIONS})
    """Tokens per example, [CLS] and [SEP]s included; longer examples are truncated (counted in the stats)."""
    seed: int = field(default=42, metadata={"ge": 0, "le": MAX_SEED})
    """Seed of the dev split and of the first run: head initialisation, data order and dropout."""
    seeds: int = field(default=1, metadata={"ge": 1})
    """Runs with seeds seed, seed+1, …: the median of each dev metric is reported, the best run's model saved."""
    metric: Literal["accuracy", "macro_f1", "mcc"] = "accuracy"
    """Dev metric for early stopping and for choosing the best epoch and the best seed."""
    max_epochs: int = field(default=3, metadata={"ge": 1})
    """Passes over the training examples per seed."""
    patience: Optional[int] = field(default=None, metadata={"ge": 1})
    """Stop a seed's run after this many epochs without a better dev metric (null: run every epoch); the weights
    of its best epoch are kept either way."""
    time_budget_s: Optional[float] = field(default=None, metadata={"gt": 0.0})
    """Stop each seed's run after this many seconds of training and fit the LR schedule to it (null: no limit)."""
    batch_size: int = field(default=32, metadata={"ge": 1})
    """Examples per optimizer step (and per forward pass on the dev set)."""
    learning_rate: float = field(default=5e-5, metadata={"gt": 0.0})
    """Peak learning rate of AdamW (BERT's paper: 2e-5 to 5e-5 for base size; small models like 1e-4 to 1e-3)."""
    weight_decay: float = field(default=0.01, metadata={"ge": 0.0})
    """AdamW weight decay (never applied to LayerNorm weights and biases)."""
    warmup_fraction: float = field(default=0.1, metadata={"ge": 0.0, "lt": 1.0})
    """Share of the optimizer steps (max_epochs × batches per epoch) spent warming the learning rate up from 0."""
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup: linear or cosine to 0, or constant."""
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0.0})
    """Clip the gradient's global norm to this (0: no clipping)."""
    classifier_dropout: Optional[float] = field(default=None, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout before the classification layer (null: the model's hidden_dropout_prob)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """As in pretrain: auto is bf16 autocast on a GPU that computes bf16 natively (compute capability 8.0 and
    above), fp16 with a gradient scaler on older GPUs, fp32 on CPU. The saved weights are fp32 either way."""
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"roles": ("execution",)})
    """auto: cuda when available, else cpu."""

    def validate(self) -> list[str]:
        problems = []
        if not self.train:
            problems.append("key 'train': no training file given; pass --train FILE or set train in the config")
        if self.text_pair_field is not None and self.text_pair_field == self.text_field:
            problems.append(f"key 'text_pair_field': '{self.text_pair_field}' is also the text_field")
        if self.label_field in (self.text_field, self.text_pair_field):
            problems.append(f"key 'label_field': '{self.label_field}' is also a text field")
        return problems


CONFIG_SCHEMAS: dict[str, type] = {
    **{name: spec.schema for name, spec in STAGES.items()}, "run": PipelineConfig, "finetune": FinetuneConfig
}
"""The configs `bert config show` knows: every pipeline stage's, the pipeline's (`run`) and finetune's."""

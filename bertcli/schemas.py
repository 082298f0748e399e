"""One dataclass per stage: the schema of its YAML file, a docstring under every field (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

Layout = Literal["sentence-per-line", "document-per-line"]
CorpusFormat = Literal["auto", "text", "jsonl"]
DecodeErrors = Literal["strict", "replace"]

PipelineStage = Literal["train-vocab", "pairs", "mask", "pretrain"]

DEFAULT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Key roles live in each field's metadata["roles"]: "execution" keys change how a stage runs but not what it
# writes (left out of its config hash); "resumable" keys may change between a pretraining run and its --resume.
# bertcli.config.keys_with_role reads them.


@dataclass
class TrainVocabConfig:
    """`bert train-vocab`: corpus → WordPiece tokenizer directory."""

    input: list[str] = field(default_factory=list, metadata={"roles": ("execution",)})
    """Corpus files, directories (read recursively) or glob patterns; .txt, .gz and .jsonl."""
    output: str = field(default="runs/tokenizer", metadata={"roles": ("execution",)})
    """Directory to write the tokenizer to (refused if it exists, unless --overwrite)."""
    layout: Layout = "sentence-per-line"
    """sentence-per-line: one sentence a line, blank line between documents (Google BERT's format);
    document-per-line: one document a line, split into sentences with the sentencex library."""
    format: CorpusFormat = "auto"
    """auto: .jsonl/.jsonl.gz files are JSON lines, everything else plain text; or force text / jsonl."""
    text_field: str = "text"
    """The key holding the text in each JSON line (format jsonl)."""
    language: str = "auto"
    """Language code for sentence splitting in document-per-line layout (e.g. en, ko, ja); auto guesses per document."""
    errors: DecodeErrors = "strict"
    """strict: invalid UTF-8 is an error naming file and line; replace: invalid bytes become U+FFFD."""
    vocab_size: int = field(default=30522, metadata={"ge": 1})
    """Size of the vocabulary, special tokens included."""
    min_frequency: int = field(default=2, metadata={"ge": 0})
    """A pair must occur at least this often to be merged; 0 means no limit."""
    limit_alphabet: int = field(default=1000, metadata={"ge": 0})
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
    max_input_chars_per_word: int = field(default=100, metadata={"ge": 1})
    """Words longer than this are encoded as [UNK] (BERT's rule)."""
    algorithm: Literal["bpe", "wordpiece"] = "wordpiece"
    """wordpiece: our deterministic trainer (byte-identical vocabularies), merging by `score`; bpe: the
    `tokenizers` library's WordPiece trainer (merges by pair count; fastest on very large corpora, not
    bit-reproducible). See docs/wordpiece.md for why wordpiece with score count is the default."""
    score: Literal["count", "likelihood", "textbook"] = "count"
    """For algorithm wordpiece: count = the pair count (BPE's criterion; measured best, see docs/benchmarks.md);
    likelihood = exact gain in the corpus's unigram log-likelihood; textbook = freq(ab)/(freq(a)·freq(b))."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Processes used for reading and counting."""
    seed: int = 0
    """Recorded in the manifest; the trainers themselves use no randomness."""

    def validate(self) -> list[str]:
        problems = []
        if not self.input:
            problems.append("key 'input': no corpus given; pass --input PATH or set input in the config")
        missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in self.special_tokens]
        if missing:
            problems.append(f"key 'special_tokens': {self.special_tokens} lacks {', '.join(missing)}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            problems.append(f"key 'special_tokens': {self.special_tokens} has duplicates")
        if not self.continuing_subword_prefix:
            problems.append("key 'continuing_subword_prefix': must not be empty")
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
    """auto, text or jsonl (see train-vocab)."""
    text_field: str = "text"
    """The key holding the text in each JSON line (format jsonl)."""
    language: str = "auto"
    """Language code for sentence splitting in document-per-line layout."""
    errors: DecodeErrors = "strict"
    """strict or replace (see train-vocab)."""
    max_seq_length: int = field(default=128, metadata={"ge": 8})
    """Tokens per sequence, [CLS] and [SEP]s included."""
    short_seq_prob: float = field(default=0.1, metadata={"ge": 0.0, "le": 1.0})
    """Probability of a shorter target length (random, from 2 up) for a chunk, so the model sees short inputs too."""
    nsp_probability: float = field(default=0.5, metadata={"ge": 0.0, "le": 1.0})
    """Probability that segment B is a random span from another document (label NotNext)."""
    nsp: bool = True
    """false: no sentence pairs; pack contiguous sentences into full-length single segments (MLM only)."""
    dupe_factor: int = field(default=1, metadata={"ge": 1})
    """Passes over the corpus, each with different pairings."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Processes; the output is byte-identical for any count."""
    shard_index: int = field(default=0, metadata={"ge": 0})
    """Which part this job builds when the work is split into num_shards independent jobs."""
    num_shards: int = field(default=1, metadata={"ge": 1})
    """Number of independent jobs the work is split into (`bert pairs --set shard_index=…` on each)."""
    sequences_per_shard: int = field(default=65536, metadata={"ge": 1})
    """Sequences per on-disk shard file."""
    seed: int = 12345
    """Seed of every random choice; the same seed gives byte-identical output."""

    def validate(self) -> list[str]:
        problems = []
        if not self.input:
            problems.append("key 'input': no corpus given; pass --input PATH or set input in the config")
        if self.shard_index >= self.num_shards:
            problems.append(
                f"key 'shard_index': got {self.shard_index}, expected a value < num_shards ({self.num_shards})"
            )
        return problems


@dataclass
class MaskConfig:
    """`bert mask`: pairs artifact → statically masked artifact (MLM)."""

    input: str = field(default="runs/pairs", metadata={"roles": ("execution",)})
    """Pairs artifact made by `bert pairs`."""
    output: str = field(default="runs/masked", metadata={"roles": ("execution",)})
    """Directory to write the masked artifact to."""
    masked_lm_prob: float = field(default=0.15, metadata={"gt": 0.0, "lt": 1.0})
    """Share of candidate tokens (all but [CLS], [SEP], [PAD]) selected for prediction."""
    max_predictions_per_seq: int = field(default=20, metadata={"ge": 1})
    """Cap on the selected tokens per sequence."""
    mask_token_prob: float = field(default=0.8, metadata={"ge": 0.0, "le": 1.0})
    """Share of selected tokens replaced by [MASK]."""
    random_token_prob: float = field(default=0.1, metadata={"ge": 0.0, "le": 1.0})
    """Share of selected tokens replaced by a random non-special token (the rest stay unchanged)."""
    whole_word_mask: bool = False
    """Select whole words (a piece and its following ## pieces) instead of single pieces."""
    dupe_factor: int = field(default=1, metadata={"ge": 1})
    """Copies of every sequence, each with a different mask."""
    num_workers: int = field(default=2, metadata={"roles": ("execution",), "ge": 1})
    """Threads (masking is numpy work that runs outside the GIL); the output is byte-identical for any count."""
    seed: int = 12345
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
    hidden_size: Optional[int] = field(default=None, metadata={"ge": 1})
    """Width of the hidden states (BertConfig.hidden_size)."""
    num_hidden_layers: Optional[int] = field(default=None, metadata={"ge": 1})
    """Transformer layers."""
    num_attention_heads: Optional[int] = field(default=None, metadata={"ge": 1})
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: Optional[int] = field(default=None, metadata={"ge": 1})
    """Width of the feed-forward layer."""
    hidden_act: str = "gelu"
    """Activation of the feed-forward layer."""
    hidden_dropout_prob: float = field(default=0.1, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout on embeddings and hidden states."""
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout on attention probabilities."""
    max_position_embeddings: int = field(default=512, metadata={"ge": 8})
    """Longest sequence the model can take; must be at least the data's max_seq_length."""
    type_vocab_size: int = field(default=2, metadata={"ge": 1})
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
    seed: int = 42
    """Seed of initialisation, data order, dropout and dynamic masking."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model's size and shape."""
    init_from: Optional[str] = None
    """Start from an existing Hugging Face BERT directory instead of random weights (missing heads are initialised)."""
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
    """Global batch size in sequences per optimizer step (micro_batch_size × accumulation × world size)."""
    micro_batch_size: int = field(default=32, metadata={"ge": 1})
    """Sequences per forward pass on one device."""
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
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup: linear or cosine to 0, or constant."""
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0.0})
    """Clip the gradient's global norm to this (0: no clipping)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on a GPU that computes bf16 natively (compute capability 8.0 and above), fp16 with a
    gradient scaler on older GPUs (V100, T4), fp32 on CPU; fp16 always uses a gradient scaler."""
    compile: bool = field(default=False, metadata={"roles": ("resumable",)})
    """torch.compile the training step (one graph per length bucket; a minute or more at start). Off by default: not
    yet measured faster on a GPU. Changes only float rounding, and with dropout the random stream (Inductor draws
    its own), so a resume that switches it is not bit-identical to an uninterrupted run."""
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"roles": ("resumable",)})
    """auto: cuda when available, else cpu. cuda without a usable GPU is refused."""
    ddp_comm: Literal["fp32", "bf16"] = field(default="fp32", metadata={"roles": ("resumable",)})
    """Several processes: the dtype gradients are all-reduced in. bf16 sends half the bytes (DDP's bf16 compression
    hook) and rounds each rank's gradient to bf16 before the sum."""
    peak_tflops: Optional[float] = field(default=None, metadata={"roles": ("execution", "resumable"), "gt": 0.0})
    """The device's dense peak in TFLOP/s for the mfu column of metrics.jsonl (null: from the GPU's name, see
    docs/pretraining.md; none on CPU)."""
    masked_lm_prob: float = field(default=0.15, metadata={"gt": 0.0, "lt": 1.0})
    """Dynamic masking only (pairs artifact): share of candidate tokens selected."""
    max_predictions_per_seq: int = field(default=20, metadata={"ge": 1})
    """Dynamic masking only: cap on selected tokens per sequence (about 15% of max_seq_length: 20 at 128, 80 at
    512). Also the width of the step's prediction slots."""
    whole_word_mask: bool = False
    """Dynamic masking only: select whole words."""
    eval_fraction: float = field(default=0.01, metadata={"ge": 0.0, "lt": 1.0})
    """Share of sequences held out for evaluation (chosen by seed)."""
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
    on_nonfinite: Literal["rollback", "stop"] = field(default="rollback", metadata={"roles": ("resumable",)})
    """On a NaN/inf loss: roll back to the last checkpoint and skip the offending batches, or stop."""

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
        if self.micro_batch_size > self.batch_size:
            problems.append(
                f"key 'micro_batch_size': {self.micro_batch_size} is above batch_size {self.batch_size}"
            )
        return problems


@dataclass
class PipelineConfig:
    """`bert run`: one YAML that drives train-vocab → pairs → mask → pretrain in order."""

    workdir: str = "runs/demo"
    """Directory under which each stage's artifact is written (tokenizer/, pairs/, masked/, pretrain/)."""
    input: list[str] = field(default_factory=list)
    """Corpus files, directories or glob patterns for train-vocab and pairs."""
    stages: list[PipelineStage] = field(default_factory=lambda: ["train-vocab", "pairs", "mask", "pretrain"])
    """Stages to run, in this order. Leave out mask to train with dynamic masking on the pairs artifact; leave out
    train-vocab to use an existing tokenizer (set pairs: {tokenizer: DIR})."""
    seed: Optional[int] = None
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
        order = ["train-vocab", "pairs", "mask", "pretrain"]
        if [s for s in order if s in self.stages] != list(self.stages):
            problems.append(f"key 'stages': {self.stages} is out of order; the order is {' → '.join(order)}")
        if not self.stages:
            problems.append("key 'stages': empty; name at least one stage")
        if not self.input and ({"train-vocab", "pairs"} & set(self.stages)):
            problems.append("key 'input': no corpus given; set input to the corpus files")
        return problems


STAGE_SCHEMAS: dict[str, type] = {
    "train-vocab": TrainVocabConfig,
    "pairs": PairsConfig,
    "mask": MaskConfig,
    "pretrain": PretrainConfig,
    "run": PipelineConfig,
}

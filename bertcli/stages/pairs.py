"""`bert pairs`: corpus + tokenizer → NSP sentence-pair artifact (sharded memory-mapped arrays)."""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml
from tqdm.auto import tqdm

from bertcli import pairing
from bertcli.artifacts import (
    TOKENIZER_DIR,
    atomic_output_dir,
    check_output,
    file_fingerprints,
    load_manifest,
    temp_dir_for,
    write_manifest,
)
from bertcli.config import keys_with_role, load_config
from bertcli.corpus import CorpusStats, check_what_was_read, iter_documents, iter_texts, resolve_inputs
from bertcli.errors import ArtifactError, ConfigError, InputError
from bertcli.executors import open_executor
from bertcli.parallel import WorkerPool
from bertcli.schemas import PairsConfig
from bertcli.shards import ShardedArrays, ShardWriter, token_dtype
from bertcli.vocab import (
    CORPUS_UNKNOWN_SHARE,
    LoadedTokenizer,
    copy_tokenizer_files,
    load_tokenizer,
    warn_if_mostly_unknown,
)

BLOCK_DOCUMENTS = 256
"""Documents per unit of work. RNGs are seeded per (seed, pass, block), so output never depends on workers."""
SCRATCH = ".scratch"
RAGGED = "input_ids"


# ---------------------------------------------------------------- the tokenized corpus, on disk

class TokenStoreWriter:
    """Append tokenized documents to flat files (tokens, sentence offsets, document index): memory stays flat."""

    def __init__(self, directory: Path, dtype: np.dtype):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.dtype = dtype
        self._files = {
            name: open(directory / name, "wb")
            for name in ("tokens.bin", "sent_offsets.i64", "doc_sent.i64", "doc_ids.i64", "counts.i32")
        }
        self.num_tokens = 0
        self.num_sentences = 0
        self._files["sent_offsets.i64"].write(np.zeros(1, np.int64).tobytes())
        self._files["doc_sent.i64"].write(np.zeros(1, np.int64).tobytes())

    def add_counts(self, counts: np.ndarray) -> None:
        """Sentence counts of the next documents in corpus order (all documents, stored or not)."""
        self._files["counts.i32"].write(np.asarray(counts, np.int32).tobytes())

    def add_documents(self, doc_ids: np.ndarray, counts: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Store documents (global ids ascending) with their sentence counts, sentence lengths and tokens."""
        if not len(doc_ids):
            return
        self._files["tokens.bin"].write(np.asarray(tokens, self.dtype).tobytes())
        sent_ends = self.num_tokens + np.cumsum(lengths, dtype=np.int64)
        self._files["sent_offsets.i64"].write(sent_ends.tobytes())
        doc_ends = self.num_sentences + np.cumsum(counts, dtype=np.int64)
        self._files["doc_sent.i64"].write(doc_ends.tobytes())
        self._files["doc_ids.i64"].write(np.asarray(doc_ids, np.int64).tobytes())
        self.num_tokens += len(tokens)
        self.num_sentences += len(lengths)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _map(path: Path, dtype: Any) -> np.ndarray:
    """A read-only memory map as a plain ndarray (np.memmap's slicing costs microseconds per call)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r"))


class TokenStore:
    """Read side of TokenStoreWriter: memory-mapped, so its pages are the kernel's to drop, not ours to hold."""

    def __init__(self, directory: Path, dtype: np.dtype):
        self.tokens = _map(directory / "tokens.bin", dtype)
        self.sent_offsets = _map(directory / "sent_offsets.i64", np.int64)
        self.doc_sent = _map(directory / "doc_sent.i64", np.int64)
        self.doc_ids = _map(directory / "doc_ids.i64", np.int64)
        self.counts = _map(directory / "counts.i32", np.int32)
        # A contiguous id range (the usual case) needs no search.
        n = len(self.doc_ids)
        self._first = int(self.doc_ids[0]) if n else 0
        self._contiguous = bool(n) and int(self.doc_ids[-1]) - self._first == n - 1

    def local(self, doc: int) -> int:
        """Position of global document `doc` in this store, or -1."""
        if self._contiguous:
            k = doc - self._first
            return k if 0 <= k < len(self.doc_ids) else -1
        k = int(np.searchsorted(self.doc_ids, doc))
        return k if k < len(self.doc_ids) and int(self.doc_ids[k]) == doc else -1

    def document_at(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s0, s1 = int(self.doc_sent[k]), int(self.doc_sent[k + 1])
        offsets = np.asarray(self.sent_offsets[s0 : s1 + 1])
        return self.tokens[offsets[0] : offsets[-1]], offsets - offsets[0]


class CorpusView:
    """Documents by global index from one or more stores (own partition first, then fetched foreign ones)."""

    def __init__(self, stores: list[TokenStore], counts: np.ndarray):
        self.stores = stores
        self.counts = counts

    def sentence_count(self, doc: int) -> int:
        return int(self.counts[doc])

    def has(self, doc: int) -> bool:
        return any(s.local(doc) >= 0 for s in self.stores)

    def document(self, doc: int) -> tuple[np.ndarray, np.ndarray]:
        for store in self.stores:
            k = store.local(doc)
            if k >= 0:
                return store.document_at(k)
        raise KeyError(f"document {doc} was not tokenized")  # a bug, not a user error


# ---------------------------------------------------------------- worker processes

@dataclass(frozen=True)
class BuildContext:
    """What every pair-building worker is given (pickled once per worker and phase)."""

    scratch: str  # the tokenized corpus: one TokenStore per name in `stores`
    stores: tuple[str, ...]
    token_dtype: np.dtype
    num_documents: int
    seed: int
    params: pairing.PairingParams
    nsp: bool
    cls_id: int
    sep_id: int
    unk_id: int


# Per-process worker state, set by the pool's initializers (one process = one worker).
_sentence_tokenizer: pairing.SentenceTokenizer | None = None
_token_dtype: np.dtype | None = None
_build: BuildContext | None = None
_view: CorpusView | None = None


def _init_tokenizer(tokenizer_json: str, dtype: np.dtype) -> None:
    from tokenizers import Tokenizer

    global _sentence_tokenizer, _token_dtype
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()  # whole sentences: pairs do their own truncation
    tok.no_padding()
    _sentence_tokenizer = pairing.SentenceTokenizer(tok)
    _token_dtype = dtype


def _tokenize_block(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sentence lengths (n,) int32 and their tokens back to back (token dtype)."""
    if not sentences:
        return np.zeros(0, np.int32), np.zeros(0, _token_dtype)
    return _sentence_tokenizer.encode(sentences, _token_dtype)


def _init_builder(context: BuildContext) -> None:
    global _build, _view
    scratch = Path(context.scratch)
    stores = [TokenStore(scratch / name, context.token_dtype) for name in context.stores]
    counts = _map(scratch / "own" / "counts.i32", np.int32)
    _build, _view = context, CorpusView(stores, counts)


def _block_rngs(seed: int, pass_index: int, block: int) -> tuple[pairing.UniformStream, np.random.Generator]:
    structure = pairing.UniformStream(np.random.default_rng([seed, pass_index, block, 0]))
    truncation = np.random.default_rng([seed, pass_index, block, 1])
    return structure, truncation


def _plan_block(block: int, pass_index: int) -> list[tuple[int, pairing.PairPlan]]:
    num_documents = _build.num_documents
    stream, _ = _block_rngs(_build.seed, pass_index, block)
    plans: list[tuple[int, pairing.PairPlan]] = []
    for doc in range(block * BLOCK_DOCUMENTS, min(num_documents, (block + 1) * BLOCK_DOCUMENTS)):
        _, offsets = _view.document(doc)
        for plan in pairing.plan_document(np.diff(offsets), doc, num_documents, _view.counts, stream, _build.params):
            plans.append((doc, plan))
    return plans


def _foreign_requests(task: tuple[int, int]) -> np.ndarray:
    """Random-next documents a block needs that this job did not tokenize: (r,) int64."""
    block, pass_index = task
    wanted = {plan.b_doc for _, plan in _plan_block(block, pass_index) if plan.b_stop < 0}
    return np.asarray(sorted(d for d in wanted if not _view.has(d)), dtype=np.int64)


def _document_stats(block: int) -> dict[str, int]:
    """Per-document facts, counted once (first pass) for this job's documents, from the index arrays alone."""
    store: TokenStore = _view.stores[0]
    first = block * BLOCK_DOCUMENTS
    last = min(_build.num_documents, first + BLOCK_DOCUMENTS)
    k0, k1 = store.local(first), store.local(last - 1) + 1
    doc_sent = store.doc_sent[k0 : k1 + 1]  # (docs + 1,) sentence index bounds
    sent_off = store.sent_offsets[doc_sent[0] : doc_sent[-1] + 1]  # (sentences + 1,) token bounds
    sentence_lengths = np.diff(sent_off)
    sentences_per_doc = np.diff(doc_sent)
    tokens_per_doc = np.diff(sent_off[doc_sent - doc_sent[0]])
    return {
        "documents": int(k1 - k0),
        "sentences": int(len(sentence_lengths)),
        "single_sentence_documents": int((sentences_per_doc == 1).sum()),
        "long_sentences": int((sentence_lengths > _build.params.max_num_tokens).sum()),
        "empty_sentences": int((sentence_lengths == 0).sum()),
        "documents_without_tokens": int((tokens_per_doc == 0).sum()),
        "document_tokens": int(sent_off[-1] - sent_off[0]),
        "unk_tokens": int((store.tokens[sent_off[0] : sent_off[-1]] == _build.unk_id).sum()),
    }


DOC_STAT_KEYS = (
    "documents",
    "sentences",
    "single_sentence_documents",
    "long_sentences",
    "empty_sentences",
    "documents_without_tokens",
    "document_tokens",
    "unk_tokens",
)


def _build_block(task: tuple[int, int]) -> tuple[pairing.PairsBlock, dict[str, int]]:
    block, pass_index = task
    build = _build
    doc_stats = _document_stats(block) if pass_index == 0 else dict.fromkeys(DOC_STAT_KEYS, 0)
    if build.nsp:
        plans = _plan_block(block, pass_index)
        _, truncation = _block_rngs(build.seed, pass_index, block)
        result = pairing.build_pairs(
            plans, _view, truncation, build.params, build.cls_id, build.sep_id, build.token_dtype
        )
    else:
        docs = range(block * BLOCK_DOCUMENTS, min(build.num_documents, (block + 1) * BLOCK_DOCUMENTS))
        result = pairing.pack_documents(
            (_view.document(d) for d in docs), build.params.max_seq_length, build.cls_id, build.sep_id,
            build.token_dtype,
        )
    return result, doc_stats


# ---------------------------------------------------------------- reading and tokenizing the corpus

def _corpus_blocks(cfg: PairsConfig, stats: CorpusStats) -> Iterator[list[list[str]]]:
    block: list[list[str]] = []
    for doc in iter_documents(cfg.input, cfg.layout, cfg.format, cfg.text_field, cfg.errors, cfg.language, stats):
        block.append(doc)
        if len(block) == BLOCK_DOCUMENTS:
            yield block
            block = []
    if block:
        yield block


def _tokenize_corpus(
    pool: WorkerPool,
    cfg: PairsConfig,
    loaded: LoadedTokenizer,
    out: Path,
    dtype: np.dtype,
    keep: Callable[[int], np.ndarray] | None,
    desc: str,
    stats: CorpusStats,
) -> None:
    """Stream the corpus once: every document's sentence count, and the tokens of those `keep` selects.

    keep(block) -> bool mask over the block's documents (None: all). Skipped blocks are not tokenized at all.
    """
    writer = TokenStoreWriter(out, dtype)
    bar = tqdm(desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True)
    block_counts: collections.deque = collections.deque()

    def tasks() -> Iterator[list[str]]:
        for block_index, docs in enumerate(_corpus_blocks(cfg, stats)):
            counts = np.fromiter(map(len, docs), dtype=np.int32, count=len(docs))
            writer.add_counts(counts)
            mask = np.ones(len(docs), bool) if keep is None else keep(block_index)[: len(docs)]
            ids = block_index * BLOCK_DOCUMENTS + np.flatnonzero(mask)
            block_counts.append((ids, counts[mask]))
            yield [s for d, m in zip(docs, mask) if m for s in d]

    tokenizer_json = str(loaded.path / "tokenizer.json")
    initargs = (tokenizer_json, dtype)
    for lengths, tokens in pool.map(_tokenize_block, tasks(), _init_tokenizer, initargs):
        ids, counts = block_counts.popleft()
        writer.add_documents(ids, counts, lengths, tokens)
        bar.update(len(tokens))
    writer.close()
    bar.close()


# ---------------------------------------------------------------- checks

def _check_config(cfg: PairsConfig, loaded: LoadedTokenizer) -> None:
    """The check that needs the tokenizer; those on the config alone are PairsConfig.validate's."""
    if cfg.max_seq_length > loaded.max_length:
        raise ConfigError(
            f"key 'max_seq_length': {cfg.max_seq_length} is above what tokenizer '{loaded.path}' allows "
            f"(model_max_length {loaded.max_length})",
            hint=f"use max_seq_length ≤ {loaded.max_length}",
        )


def _shard_blocks(num_blocks: int, shard_index: int, num_shards: int) -> range:
    """The contiguous range of blocks a shard job builds (concatenating the shards in order = one job's output)."""
    return range(num_blocks * shard_index // num_shards, num_blocks * (shard_index + 1) // num_shards)


def _summarise(totals: dict[str, int], corpus: dict, max_seq_length: int, dupe_factor: int) -> dict:
    """Manifest stats: the integer counts (summable across shard parts) and the shares derived from them."""
    pairs = totals["pairs"]
    stats: dict[str, Any] = {"sequences": pairs, **totals}
    stats.update(
        is_next_share=pairing.share(totals["is_next"], pairs),
        random_next_share=pairing.share(totals["random_next"], pairs),
        forced_random_share=pairing.share(totals["forced_random_next"], pairs),
        truncation_rate=pairing.share(totals["truncated_pairs"], pairs),
        truncated_token_share=pairing.share(totals["truncated_tokens"], totals["document_tokens"] * dupe_factor),
        short_sequence_share=pairing.share(totals["short_target_pairs"], pairs),
        padding_share=pairing.share(totals["padding_tokens"], pairs * max_seq_length),
        mean_sequence_length=round(totals["tokens"] / pairs, 3) if pairs else 0.0,
        unk_share=pairing.share(totals["unk_tokens"], totals["document_tokens"]),
        documents_skipped={
            "no_tokens": totals["documents_without_tokens"],
        },
        corpus=corpus,
    )
    return stats


# ---------------------------------------------------------------- the stage

def run(cfg: PairsConfig, overwrite: bool = False) -> dict:
    """Build the pairs artifact (or merge shard parts, when every input is a pairs artifact); returns the manifest."""
    if cfg.input and all((Path(p) / "manifest.json").is_file() for p in cfg.input):
        return merge_parts(cfg, overwrite)
    if cfg.executor == "ray":
        return _build_parts_and_merge(cfg, overwrite)
    paths = resolve_inputs(cfg.input)
    loaded = load_tokenizer(cfg.tokenizer)
    _check_config(cfg, loaded)
    inputs = (*cfg.input, *paths, cfg.tokenizer)
    check_output(cfg.output, overwrite, inputs, stage="pairs")
    dtype = token_dtype(loaded.vocab_size)
    params = pairing.PairingParams(cfg.max_seq_length, cfg.short_seq_prob, cfg.nsp_probability)
    corpus_stats = CorpusStats()
    with atomic_output_dir(cfg.output, overwrite, inputs, stage="pairs") as tmp, WorkerPool(cfg.num_workers) as pool:
        scratch = tmp / SCRATCH
        sharded = cfg.num_shards > 1
        own_blocks: range | None = None
        if sharded:
            # A first cheap pass counts documents, so that each job knows its contiguous share of blocks.
            count_stats = CorpusStats()
            _tokenize_corpus(pool, cfg, loaded, scratch / "count", dtype, lambda b: np.zeros(BLOCK_DOCUMENTS, bool),
                             "counting documents", count_stats)
            num_documents = count_stats.documents
            own_blocks = _shard_blocks(-(-num_documents // BLOCK_DOCUMENTS), cfg.shard_index, cfg.num_shards)
            shutil.rmtree(scratch / "count")

        def keep_own(block: int) -> np.ndarray:
            inside = own_blocks is None or block in own_blocks
            return np.full(BLOCK_DOCUMENTS, inside, bool)

        _tokenize_corpus(pool, cfg, loaded, scratch / "own", dtype, keep_own, "tokenizing", corpus_stats)
        check_what_was_read(corpus_stats, cfg.input)
        num_documents = corpus_stats.documents
        if cfg.nsp and num_documents < 2:
            raise InputError(
                f"the corpus ({', '.join(map(str, paths))}) holds a single document: a random next sentence must come "
                "from another document, so NSP pairs cannot be made without mislabelling",
                hint="add documents (separate them by a blank line), or set nsp: false to pack MLM-only sequences",
            )
        num_blocks = -(-num_documents // BLOCK_DOCUMENTS)
        blocks = own_blocks if own_blocks is not None else range(num_blocks)
        context = BuildContext(
            scratch=str(scratch),
            stores=("own",),
            token_dtype=dtype,
            num_documents=num_documents,
            seed=cfg.seed,
            params=params,
            nsp=cfg.nsp,
            cls_id=loaded.special_ids["cls"],
            sep_id=loaded.special_ids["sep"],
            unk_id=loaded.special_ids["unk"],
        )
        if sharded and cfg.nsp:
            # Random-next documents come from the whole corpus: find those this job lacks, then tokenize them.
            tasks = [(b, p) for b in blocks for p in range(cfg.dupe_factor)]
            wanted = np.unique(np.concatenate(
                [np.zeros(0, np.int64)]
                + list(pool.map(_foreign_requests, tasks, _init_builder, (context,)))
            ))

            def keep_foreign(block: int) -> np.ndarray:
                ids = block * BLOCK_DOCUMENTS + np.arange(BLOCK_DOCUMENTS)
                return np.isin(ids, wanted)

            _tokenize_corpus(pool, cfg, loaded, scratch / "foreign", dtype, keep_foreign,
                             "tokenizing random-next documents", CorpusStats())
            context = replace(context, stores=("own", "foreign"))

        writer = ShardWriter(
            tmp,
            ragged={RAGGED: dtype},
            scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
            sequences_per_shard=cfg.sequences_per_shard,
        )
        totals = dict.fromkeys(pairing.PAIR_STAT_KEYS + DOC_STAT_KEYS, 0)
        passes = cfg.dupe_factor if cfg.nsp else 1
        tasks = [(b, p) for b in blocks for p in range(passes)]  # block-major: shard parts concatenate in order
        bar = tqdm(desc="building pairs", unit="tok", unit_scale=True, dynamic_ncols=True)
        for result, doc_stats in pool.map(_build_block, tasks, _init_builder, (context,)):
            _write_block(writer, result)
            for key, value in itertools.chain(result.stats.items(), doc_stats.items()):
                totals[key] += value
            bar.update(int(result.lengths.sum()))
        bar.close()
        writer.close()
        shutil.rmtree(scratch)
        if totals["pairs"] == 0 and not sharded:  # a shard part may be empty when there are few documents
            raise InputError(
                f"the corpus ({', '.join(map(str, paths))}) gave no sequences (every sentence tokenized to nothing)",
                hint="check the corpus and the tokenizer",
            )
        corpus_text = iter_texts(paths, cfg.layout, cfg.format, cfg.text_field, cfg.errors, cfg.language)  # lazy
        warn_if_mostly_unknown(totals["unk_tokens"], totals["document_tokens"], "the corpus", loaded.path,
                               corpus_text, limit=CORPUS_UNKNOWN_SHARE)
        copy_tokenizer_files(loaded.path, tmp / TOKENIZER_DIR)
        manifest = write_manifest(
            tmp,
            "pairs",
            cfg,
            stats=_summarise(totals, corpus_stats.as_dict(), cfg.max_seq_length, passes),
            inputs={"tokenizer": {"path": str(loaded.path), "hash": loaded.hash}, "corpus": file_fingerprints(paths)},
            extra=_extra(cfg, loaded, dtype, num_documents),
        )
    return manifest


def _extra(cfg: PairsConfig, loaded: LoadedTokenizer, dtype: np.dtype, num_documents: int) -> dict:
    return {
        "special_token_ids": loaded.special_ids,
        "vocab_size": loaded.vocab_size,
        "max_seq_length": cfg.max_seq_length,
        "token_dtype": np.dtype(dtype).name,
        "nsp": cfg.nsp,
        "dupe_factor": cfg.dupe_factor if cfg.nsp else 1,
        "num_documents": num_documents,
        "shard_index": cfg.shard_index,
        "num_shards": cfg.num_shards,
        "sequences_per_shard": cfg.sequences_per_shard,
        "fields": {
            "input_ids": "ragged, [CLS] A [SEP] B [SEP] (nsp: false: [CLS] text [SEP], [SEP] between documents)",
            "type_boundary": "int32, index of B's first token; token_type_ids = 0 before it, 1 from it",
            "next_sentence_label": "int8, 0 = IsNext, 1 = random next, -1 = no pair (nsp: false)",
        },
        "reproducible": True,
    }


def _write_block(writer: ShardWriter, result: pairing.PairsBlock) -> None:
    writer.add_block(
        {RAGGED: (result.input_ids, result.lengths)},
        {"type_boundary": result.type_boundary, "next_sentence_label": result.next_sentence_label},
    )


# ---------------------------------------------------------------- executor ray: the parts as tasks, then the merge

def _build_part(job: PairsConfig) -> dict:
    """One part of a split run, in a task: what `bert pairs --set shard_index=K` builds. Returns its manifest."""
    return run(job, overwrite=True)  # a retried task replaces a part that an earlier attempt finished


def _build_parts_and_merge(cfg: PairsConfig, overwrite: bool) -> dict:
    """executor ray: the num_shards parts of a split run as tasks, merged into cfg.output (the bytes one job writes).

    The parts go to a temporary sibling of the output, removed at the end; on a cluster every node must reach it
    and the corpus at the same paths (a shared filesystem, see docs/distributed.md).
    """
    paths = resolve_inputs(cfg.input)  # a missing corpus or an unfit tokenizer is reported before any task starts
    loaded = load_tokenizer(cfg.tokenizer)
    _check_config(cfg, loaded)
    out = check_output(cfg.output, overwrite, (*cfg.input, *paths, cfg.tokenizer), stage="pairs")
    with open_executor(cfg) as executor:  # first: a missing Ray is then one line, with no note or bar before it
        if cfg.num_shards == 1:
            print("note: executor ray with num_shards 1 runs the whole job as one task; set num_shards (a few times "
                  "the workers) to spread it", file=sys.stderr, flush=True)
        parts_dir = temp_dir_for(out.with_name(out.name + ".parts")).absolute()
        # Absolute paths: a task may start in another directory, on another node. A directory per part: a job
        # clears stale temporary directories beside its output by process id, which only means something on its
        # own node.
        jobs = [
            replace(cfg, executor="local", num_workers=1, shard_index=k, input=[os.path.abspath(p) for p in cfg.input],
                    tokenizer=os.path.abspath(cfg.tokenizer), output=str(parts_dir / str(k) / "part"))
            for k in range(cfg.num_shards)
        ]
        try:
            with tqdm(total=cfg.num_shards, desc="building parts", unit="part", dynamic_ncols=True) as bar:
                start, corpus_tokens = time.monotonic(), 0
                for manifest in executor.map(_build_part, jobs):
                    corpus_tokens += manifest["stats"]["document_tokens"]
                    bar.set_postfix_str(f"{corpus_tokens / (time.monotonic() - start):,.0f} corpus tok/s",
                                        refresh=False)
                    bar.update()
            return merge_parts(replace(cfg, input=[job.output for job in jobs]), overwrite)
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)


# ---------------------------------------------------------------- merging shard parts

def merge_parts(cfg: PairsConfig, overwrite: bool = False) -> dict:
    """Join the parts of a `--num-shards` run into the artifact one job would have written, byte for byte."""
    parts = [Path(p) for p in cfg.input]
    manifests = [load_manifest(p, ("pairs",)) for p in parts]
    configs = []
    for part in parts:
        data = yaml.safe_load((part / "config.yaml").read_text(encoding="utf-8"))
        configs.append(data)
    # Parts may come from other machines, where the corpus and tokenizer live at other paths: the corpus is compared
    # by content (the tokenizer by hash, below), and keys on how a job ran may differ, as shard_index must.
    execution = keys_with_role(PairsConfig, "execution")
    ignored = (*execution, "shard_index")
    base = {k: v for k, v in configs[0].items() if k not in ignored}

    def corpus_identity(manifest: dict) -> list:
        return [(f.get("bytes"), f.get("sha256")) for f in manifest["inputs"].get("corpus", [])]

    seen = []
    for part, data, manifest in zip(parts, configs, manifests):
        other = {k: v for k, v in data.items() if k not in ignored}
        if corpus_identity(manifest) != corpus_identity(manifests[0]):
            raise ArtifactError(
                f"pairs part '{part}' was made from another corpus than '{parts[0]}' (file sizes or sha256 differ)",
                hint="merge only the parts of one `bert pairs --num-shards N` run over the same files",
            )
        if other != base:
            diff = sorted(k for k in set(other) | set(base) if other.get(k) != base.get(k))
            raise ArtifactError(
                f"pairs part '{part}' was made with another config than '{parts[0]}' (keys {', '.join(diff)} differ)",
                hint="merge only the parts of one `bert pairs --set num_shards=N` run",
            )
        if manifest["inputs"]["tokenizer"]["hash"] != manifests[0]["inputs"]["tokenizer"]["hash"]:
            raise ArtifactError(f"pairs part '{part}' was made with another tokenizer than '{parts[0]}'")
        seen.append(int(data.get("shard_index", 0)))
    num_shards = int(base.get("num_shards", 1))
    if sorted(seen) != list(range(num_shards)):
        raise ArtifactError(
            f"the parts given are shards {sorted(seen)} of a {num_shards}-shard run; "
            f"need each of 0..{num_shards - 1} once",
            hint="pass every part's directory with --input",
        )
    order = sorted(range(len(parts)), key=lambda i: seen[i])
    # What the data came from is the first part's; how this command runs (output, workers, executor) its own.
    first_cfg = configs[order[0]]
    merged_cfg = load_config(
        PairsConfig,
        None,
        (),
        {k: v for k, v in base.items() if k != "num_shards"}
        | {"input": first_cfg["input"], "tokenizer": first_cfg["tokenizer"]}
        | {k: getattr(cfg, k) for k in execution if k not in ("input", "tokenizer")},
    )
    merged_cfg = replace(merged_cfg, shard_index=0, num_shards=1)
    check_output(cfg.output, overwrite, tuple(parts), stage="pairs")
    dtype = np.dtype(manifests[0]["token_dtype"])
    totals: dict[str, int] = {}
    with atomic_output_dir(cfg.output, overwrite, tuple(parts), stage="pairs") as tmp:
        writer = ShardWriter(
            tmp,
            ragged={RAGGED: dtype},
            scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
            sequences_per_shard=merged_cfg.sequences_per_shard,
        )
        bar = tqdm(desc="merging parts", unit="seq", unit_scale=True, dynamic_ncols=True)
        for i in order:
            if manifests[i]["stats"]["sequences"] == 0:
                arrays = None
            else:
                arrays = ShardedArrays(parts[i])
            for shard in arrays.shards if arrays is not None else []:
                offsets = np.asarray(shard[f"{RAGGED}.offsets"])
                writer.add_block(
                    {RAGGED: (np.asarray(shard[RAGGED]), np.diff(offsets))},
                    {"type_boundary": shard["type_boundary"], "next_sentence_label": shard["next_sentence_label"]},
                )
                bar.update(len(offsets) - 1)
            for key, value in manifests[i]["stats"].items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        bar.close()
        writer.close()
        copy_tokenizer_files(parts[order[0]] / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
        first = manifests[order[0]]
        totals.pop("sequences", None)
        stats = _summarise(totals, first["stats"]["corpus"], merged_cfg.max_seq_length, first["dupe_factor"])
        extra = {k: v for k, v in first.items() if k in _extra_keys()}
        extra.update(shard_index=0, num_shards=1)
        manifest = write_manifest(tmp, "pairs", merged_cfg, stats=stats, inputs=first["inputs"], extra=extra)
    return manifest


def _extra_keys() -> tuple[str, ...]:
    return ("special_token_ids", "vocab_size", "max_seq_length", "token_dtype", "nsp", "dupe_factor",
            "num_documents", "shard_index", "num_shards", "sequences_per_shard", "fields", "reproducible")


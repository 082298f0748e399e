"""Vocabulary extension for domain adaptation, measured: pieces per word and held-out MLM accuracy after the same
continued pretraining with and without `train-vocab --set extend_from=… --set extra_tokens=N`. Prints JSON.

    OMP_NUM_THREADS=1 python scripts/bench_vocab_extension.py --base-corpus ../shared/data/en-small.txt \\
        --domain ../shared/data/jargon-public-domain.txt --domain ../shared/data/ko-small.txt --out runs/bench-ext

1. base: a vocabulary (--base-vocab tokens) trained on the base corpus and a BERT-tiny pretrained on it for
   --base-steps steps (dynamic masking, sequences of 64).
2. per domain corpus: its documents split into train and held-out (every --heldout-every-th document held out);
   the base tokenizer extended on the train part (--extra-tokens); then two continued-pretraining runs from the base
   model, the same --steps, learning rate and seed: `without` on data tokenized by the base tokenizer, `with` on
   data tokenized by the extended one (init_from grows the model: new rows = mean of old pieces' rows).
3. on the held-out part: pieces per word and [UNK] share for both tokenizers, and `bert evaluate` (held-out pairs,
   masked once with seed 0 by `bert mask`) of the base model and of both runs; wall time of every run.

Each command runs as a subprocess of the CLI, one thread (OMP_NUM_THREADS=1, num_workers 1 or 0).
Note: MLM accuracy is per predicted piece, so the two tokenizations do not ask the same questions: the extended
tokenizer's pieces are longer (harder to guess one), and a word the base tokenizer turns into [UNK] is never a
target at all (special tokens are never masked). So the accuracy is also split by target (base-vocabulary tokens,
appended tokens), and the pieces-per-word and [UNK] figures stand beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
SEQ = 64
PRETRAIN_COMMON = [
    "model.preset=tiny", f"model.max_position_embeddings={SEQ}", "model.hidden_dropout_prob=0.0",
    "model.attention_probs_dropout_prob=0.0", "batch_size=32", "micro_batch_size=32", "eval_every=0",
    "save_every=0", "log_every=50", "num_workers=0", "device=cpu", "report_to=[]", "seed=0",
]


def bert(*args: str) -> float:
    """Run `bert ARGS` (python -m bertcli) on one thread; returns the wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bertcli", *args], env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"failed: bert {' '.join(args)}")
    return round(time.perf_counter() - start, 1)


def sets(*pairs: str) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


def documents(corpus: Path) -> list[list[str]]:
    """A sentence-per-line corpus's documents (blank-line separated), each a list of lines."""
    docs, current = [], []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    return docs


def base_corpus_without(corpus: Path, domains: list[Path], out: Path) -> tuple[Path, int]:
    """The base corpus less every document that also appears in a domain corpus (en-small holds some Jargon File
    entries): the held-out domain documents are then never seen in base pretraining."""
    seen = {"\n".join(d) for path in domains for d in documents(path)}
    docs = documents(corpus)
    kept = [d for d in docs if "\n".join(d) not in seen]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join("\n".join(d) for d in kept) + "\n", encoding="utf-8")
    return out, len(docs) - len(kept)


def split_documents(corpus: Path, out: Path, every: int) -> tuple[Path, Path, dict]:
    """Sentence-per-line corpus → train.txt and heldout.txt, whole documents (every `every`-th held out)."""
    docs = documents(corpus)
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    held = [d for i, d in enumerate(docs) if i % every == every - 1]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.txt", train), ("heldout.txt", held)):
        (out / name).write_text("\n\n".join("\n".join(d) for d in part) + "\n", encoding="utf-8")
    return out / "train.txt", out / "heldout.txt", {"documents_train": len(train), "documents_heldout": len(held)}


def segmentation(tok_dir: Path, text_file: Path) -> dict:
    from bertcli.vocab import load_tokenizer

    loaded = load_tokenizer(tok_dir)
    unk = loaded.special_ids["unk"]
    lines = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    pieces = words = unks = 0
    for enc in loaded.tokenizer.encode_batch(lines, add_special_tokens=False):
        pieces += len(enc.ids)
        words += len({w for w in enc.word_ids if w is not None})
        unks += sum(1 for i in enc.ids if i == unk)  # an [UNK] is always a whole word in WordPiece
    return {"pieces_per_word": round(pieces / words, 4), "unk_share_of_words": round(unks / words, 4),
            "pieces_per_known_word": round((pieces - unks) / max(words - unks, 1), 4),
            "words": words, "vocab_size": loaded.vocab_size}


def evaluate(model: Path, data: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "bertcli", "evaluate", "--model", str(model), "--data", str(data),
                             "--json", "--device", "cpu"], env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed: {result.stderr[-2000:]}")
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: metrics[k] for k in ("mlm_accuracy", "mlm_loss", "nsp_accuracy") if k in metrics}


def accuracy_by_target(model_dir: Path, masked_dir: Path, old_vocab_size: int) -> dict:
    """MLM accuracy on the held-out masked positions, split by target: tokens of the base vocabulary (id < its
    size) and appended tokens. [UNK] is never a target (special tokens are never masked), so with the base tokenizer
    a word it cannot spell is never asked for. Plain transformers forward passes over the artifact `bert evaluate`
    reads; the overall figure equals its mlm_accuracy (a check of this code)."""
    import numpy as np
    import torch
    from transformers import BertForMaskedLM

    from bertcli.artifacts import load_data

    torch.set_num_threads(1)
    data = load_data(masked_dir)
    pad = data.special_ids["pad"]
    model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    right = {"all": 0, "base_vocabulary": 0, "appended": 0}
    total = dict.fromkeys(right, 0)
    n = len(data.arrays)
    for start in range(0, n, 64):
        rows = [data.arrays[i] for i in range(start, min(start + 64, n))]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            length = len(r["input_ids"])
            ids[b, :length] = torch.from_numpy(r["input_ids"].astype(np.int64))
            mask[b, :length] = 1
            types[b, int(r["type_boundary"]) : length] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # (B, T, V)
        for b, r in enumerate(rows):
            positions = torch.from_numpy(r["masked_positions"].astype(np.int64))
            labels = r["masked_labels"].astype(np.int64)
            hits = logits[b, positions].argmax(-1).numpy() == labels
            for group, chosen in (("all", labels >= 0), ("base_vocabulary", labels < old_vocab_size),
                                  ("appended", labels >= old_vocab_size)):
                right[group] += int(hits[chosen].sum())
                total[group] += int(chosen.sum())
    out = {f"accuracy_{g}_targets": round(right[g] / total[g], 4) if total[g] else None for g in right}
    out.update({f"{g}_targets": total[g] for g in right})
    return out


def heldout_data(tok: Path, heldout: Path, out: Path) -> Path:
    bert("pairs", "--input", str(heldout), "--tokenizer", str(tok), "--output", str(out / "pairs"),
         *sets(f"max_seq_length={SEQ}", "num_workers=1", "seed=0"))
    bert("mask", "--input", str(out / "pairs"), "--output", str(out / "masked"), *sets("num_workers=1", "seed=0"))
    return out / "masked"


def continued(tok: Path, train: Path, base_model: Path, out: Path, args: argparse.Namespace) -> dict:
    bert("pairs", "--input", str(train), "--tokenizer", str(tok), "--output", str(out / "pairs"),
         *sets(f"max_seq_length={SEQ}", "num_workers=1", "seed=0", f"dupe_factor={args.dupe_factor}"))
    wall = bert("pretrain", "--data", str(out / "pairs"), "--output", str(out / "run"),
                *sets(*PRETRAIN_COMMON, f"init_from={base_model}", f"max_steps={args.steps}",
                      f"learning_rate={args.lr}", f"warmup_steps={args.steps // 10}"))
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    return {"steps": manifest["stats"]["steps"], "train_elapsed_s": manifest["stats"]["elapsed_s"],
            "pretrain_wall_s": wall, "tokens": manifest["stats"]["tokens"], "vocab_size": manifest["vocab_size"]}


def random_rows_model(base_model: Path, ext_tok: Path, out: Path, seed: int = 0) -> Path:
    """The ablation arm's starting point: the base model grown to the extended vocabulary with its new rows drawn
    as BertForPreTraining initialises any embedding (normal, std initializer_range) and a zero bias, instead of the
    mean of their pieces; saved with the extended tokenizer, so `init_from` loads it without growing it again."""
    import torch
    from transformers import BertForPreTraining

    from bertcli.model import grow_vocabulary
    from bertcli.vocab import copy_tokenizer_files, read_vocab

    old_size = len(read_vocab(base_model))
    model = BertForPreTraining.from_pretrained(str(base_model))
    grow_vocabulary(model, old_size, [[] for _ in range(len(read_vocab(ext_tok)) - old_size)])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight  # tied to the decoder: one tensor
        weight[old_size:] = torch.randn(weight[old_size:].shape, generator=generator) * model.config.initializer_range
        model.cls.predictions.bias[old_size:] = 0.0
    model.save_pretrained(str(out))
    copy_tokenizer_files(ext_tok, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-corpus", type=Path, required=True)
    parser.add_argument("--domain", action="append", required=True,
                        help="domain corpus, optionally =N for its own extra_tokens (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-vocab-extension")
    parser.add_argument("--base-vocab", type=int, default=8000)
    parser.add_argument("--base-steps", type=int, default=1200)
    parser.add_argument("--extra-tokens", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600, help="continued-pretraining steps, each run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dupe-factor", type=int, default=2)
    parser.add_argument("--heldout-every", type=int, default=10)
    parser.add_argument("--limit-alphabet", type=int, default=3000)
    parser.add_argument("--random-rows-arm", action="store_true",
                        help="also continue from the base grown with random new rows (ablation of the init)")
    args = parser.parse_args()
    domains = []
    for spec in args.domain:
        path, _, n = spec.rpartition("=") if spec.rpartition("=")[2].isdigit() else (spec, "", "")
        domains.append((Path(path), int(n) if n else args.extra_tokens))
    out: Path = args.out
    report: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   "1 thread per run",
        "command": " ".join(["python", *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    base_tok, base_run = out / "base" / "tokenizer", out / "base" / "run"
    if not (base_run / "manifest.json").is_file():
        shutil.rmtree(out / "base", ignore_errors=True)
        base_corpus, dropped = base_corpus_without(args.base_corpus, [p for p, _ in domains],
                                                    out / "base" / "corpus.txt")
        t_vocab = bert("train-vocab", "--input", str(base_corpus), "--output", str(base_tok),
                       *sets(f"vocab_size={args.base_vocab}", "num_workers=1"))
        bert("pairs", "--input", str(base_corpus), "--tokenizer", str(base_tok), "--output",
             str(out / "base" / "pairs"), *sets(f"max_seq_length={SEQ}", "num_workers=1", "seed=0"))
        t_pre = bert("pretrain", "--data", str(out / "base" / "pairs"), "--output", str(base_run),
                     *sets(*PRETRAIN_COMMON, f"max_steps={args.base_steps}", "learning_rate=0.002",
                           "warmup_steps=100"))
        report["base"] = {"train_vocab_wall_s": t_vocab, "pretrain_wall_s": t_pre,
                          "documents_dropped_as_in_a_domain_corpus": dropped}
    report.setdefault("base", {})["steps"] = json.loads((base_run / "manifest.json").read_text())["stats"]["steps"]
    base_model = base_run / "final"
    report["domains"] = {}
    for corpus, extra_tokens in domains:
        d = out / corpus.stem
        shutil.rmtree(d, ignore_errors=True)
        train, heldout, counts = split_documents(corpus, d / "split", args.heldout_every)
        ext_tok = d / "extended-tokenizer"
        t_ext = bert("train-vocab", "--input", str(train), "--output", str(ext_tok),
                     *sets(f"extend_from={base_tok}", f"extra_tokens={extra_tokens}", "num_workers=1",
                           f"limit_alphabet={args.limit_alphabet}"))
        ext_manifest = json.loads((ext_tok / "manifest.json").read_text())
        old_vocab = (base_tok / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        added = (ext_tok / "vocab.txt").read_text(encoding="utf-8").split("\n")[len(old_vocab) : -1]
        row: dict = {**counts, "extension": {
            "train_vocab_wall_s": t_ext, "extra_tokens": extra_tokens, "added_tokens": ext_manifest["added_tokens"],
            "added_single_characters": sum(1 for t in added if len(t.removeprefix("##")) == 1),
            "first_added_merges": [t for t in added if len(t.removeprefix("##")) > 1][:15],
        }}
        held_base = heldout_data(base_tok, heldout, d / "heldout-base")
        held_ext = heldout_data(ext_tok, heldout, d / "heldout-extended")
        old_size = len(old_vocab)
        row["base_model_no_continued_training"] = {**segmentation(base_tok, heldout),
                                                   **evaluate(base_model, held_base),
                                                   **accuracy_by_target(base_model, held_base, old_size)}
        arms = [("without_extension", base_tok, held_base, base_model),
                ("with_extension", ext_tok, held_ext, base_model)]
        if args.random_rows_arm:
            arms.append(("with_extension_random_new_rows", ext_tok, held_ext,
                         random_rows_model(base_model, ext_tok, d / "random-rows-model")))
        for name, tok, held, start in arms:
            run = continued(tok, train, start, d / name, args)
            row[name] = {**segmentation(tok, heldout), **run, **evaluate(d / name / "run", held),
                         **accuracy_by_target(d / name / "run" / "final", held, old_size)}
        report["domains"][corpus.name] = row
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

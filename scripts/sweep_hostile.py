#!/usr/bin/env python
"""A reproducible sweep of hostile or mistaken inputs across every `bert` command (docs/reliability.md).

    .venv/bin/python scripts/sweep_hostile.py --workdir /tmp/sweep [--jobs 2] [--only SUBSTRING] [--list]
                                              [--reuse-fixtures]

WORKDIR is deleted and rebuilt on every run (with --reuse-fixtures only WORKDIR/s and WORKDIR/logs are).

It builds its own fixtures in WORKDIR/fx (a 300-line corpus, two tokenizers, pairs and masked artifacts, a
BERT-tiny of 5 steps, a fine-tuned classifier), then runs each scenario as `python -m bertcli …` in its own
directory WORKDIR/s/NNN-name, and records per scenario:

- the exit code, whether it finished within its timeout, how many `error:` / `hint:` lines stderr has, whether a
  `Traceback` leaked;
- whether the files and directories the scenario protects (the user's sentinels and inputs) are byte-identical
  afterwards, and whether a pickle payload planted in a model or artifact ever ran (its marker file appears);
- whether `.NAME.tmp-PID` / `.NAME.old-PID` litter was left in the directories it touched, and whether a refused
  command still created its output.

Each scenario's result is printed as one JSON line (its full output is in WORKDIR/logs/NNN-name.txt); the last
line is the summary object (also written to WORKDIR/summary.json). A scenario is

- a clean refusal: expected to be refused, exit 2, exactly one `error:` line, no traceback, nothing lost, no litter;
- accepted as expected: exit 0, no traceback, nothing lost, no litter;
- a broken promise otherwise (exit 1, a timeout or crash, a leaked traceback, lost data, litter, bad input
  accepted, several error lines, a refusal that left an output, a payload that ran…).

"either" scenarios (where a clean refusal and a success are both fine) only break a promise by the above faults.
Softer findings (a refusal without a `hint:` line, an error line that does not name what the scenario expected
it to name) are listed under `soft_issues`.

Limits of the method: the sweep runs as whatever user starts it, so as root a read-only parent directory is
skipped (chmod does not stop root); one command-line argument can hold at most 128 KiB on Linux, so the 200k-character
pair goes through `predict-nsp --input` and the command-line variants use ~110k characters.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# A stage's temporaries: .NAME.tmp-PID / .NAME.old-PID, .NAME.tmp-HOST-PID (any suffix after tmp-/old-), and the
# .NAME.tmp.png style of single files written by plot / attention.
LITTER = re.compile(r"^\..+\.(tmp|old)[-.].+$")
PAYLOAD_MARK = "PAYLOAD-RAN"


# ---------------------------------------------------------------- running bertcli


def bert_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("BERTCLI_DEBUG", None)
    env.pop("BERTCLI_VERIFY_MAX_BYTES", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    if extra:
        env.update(extra)
    return env


def run_bert(args: list[str], cwd: Path, timeout: float, env: dict | None = None,
             stdin: Optional[str] = None) -> tuple[int | None, str, str, float]:
    """(exit code or None on timeout, stdout, stderr, seconds). The whole process group is killed on timeout."""
    start = time.monotonic()
    proc = subprocess.Popen([PY, "-m", "bertcli", *args], cwd=cwd, env=bert_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin is not None else
                            subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(input=stdin.encode() if stdin is not None else None, timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        rc = None
    return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - start


def must(args: list[str], cwd: Path, timeout: float = 300) -> None:
    rc, out, err, secs = run_bert(args, cwd, timeout)
    if rc != 0:
        sys.exit(f"fixture failed ({rc}): bert {' '.join(args)}\n{out[-2000:]}\n{err[-3000:]}")
    print(json.dumps({"fixture": args[0], "output": args[args.index("--output") + 1] if "--output" in args else None,
                      "seconds": round(secs, 1)}), flush=True)


# ---------------------------------------------------------------- snapshots


def snapshot(path: Path, top: bool = True) -> object:
    """What a path holds, to compare before and after: link targets, file bytes (sha256), directory trees. A
    protected path that is a link is followed (its target is compared too); links below it are not (loops)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        target = snapshot(path.resolve(), top=False) if top and path.exists() else None
        return ("link", os.readlink(path), target)
    if stat.S_ISREG(st.st_mode):
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", {p.name: snapshot(p, top=False) for p in sorted(path.iterdir())})
    return ("other", stat.S_IFMT(st.st_mode))


def quick_fingerprint(root: Path) -> dict:
    """Sizes and mtimes of a tree: cheap, for the fixtures every scenario reads."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, stat.S_IFMT(st.st_mode))
    return out


def diff_snapshot(a: object, b: object, where: str) -> list[str]:
    if a == b:
        return []
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "dir":
        out = []
        for name in sorted(set(a[1]) | set(b[1])):
            out += diff_snapshot(a[1].get(name), b[1].get(name), f"{where}/{name}")
        return out
    if b is None:
        return [f"{where} deleted"]
    if a is None:
        return [f"{where} appeared"]
    return [f"{where} changed"]


def find_litter(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                if LITTER.match(name):
                    found.append(os.path.join(dirpath, name))
    return sorted(found)


# ---------------------------------------------------------------- scenarios


@dataclass
class Plan:
    """What a scenario's setup returns: the command line and what to check."""

    args: list[str]
    protect: list[Path] = field(default_factory=list)
    """Paths (the user's files, the command's inputs) that must be byte-identical afterwards."""
    output: Optional[Path] = None
    """The output a refused command must not create (when it did not exist before)."""
    names: list[str] = field(default_factory=list)
    """Substrings the error line should contain (a soft check)."""
    never: list[Path] = field(default_factory=list)
    """Paths that must never appear (a pickle payload's marker)."""
    env: dict = field(default_factory=dict)
    stdin: Optional[str] = None
    skip: Optional[str] = None
    check: Optional[Callable[[int | None, str, str, float], Optional[str]]] = None
    """Extra check after the run: a problem text, or None."""
    watch: list[Path] = field(default_factory=list)
    """Extra directories to scan for litter (besides the scenario's and the fixtures')."""


@dataclass
class Scenario:
    name: str
    command: str
    expect: str  # refuse | accept | either
    setup: Callable[[Path], Plan]
    timeout: float = 120.0
    note: str = ""


SCENARIOS: list[Scenario] = []


def sc(name: str, command: str, expect: str, timeout: float = 120.0, note: str = ""):
    assert expect in ("refuse", "accept", "either"), expect

    def deco(fn: Callable[[Path], Plan]) -> Callable[[Path], Plan]:
        SCENARIOS.append(Scenario(name, command, expect, fn, timeout, note))
        return fn

    return deco


def simple(name: str, command: str, expect: str, args: Callable[[Path], list[str]], timeout: float = 120.0,
           names: Callable[[Path], list[str]] | None = None, protect: Callable[[Path], list[Path]] | None = None,
           output: Callable[[Path], Path] | None = None, env: dict | None = None) -> None:
    def setup(d: Path) -> Plan:
        return Plan(args=args(d), names=names(d) if names else [], protect=protect(d) if protect else [],
                    output=output(d) if output else None, env=env or {})

    SCENARIOS.append(Scenario(name, command, expect, setup, timeout))


class FX:
    """Fixture paths (set by build_fixtures)."""

    root: Path
    corpus: Path
    tok: Path
    tok2: Path
    pairs: Path
    pairs2: Path
    masked: Path
    run: Path
    model: Path
    clf: Path
    train: Path


TINY = ["--set", "model.preset=tiny", "--set", "model.max_position_embeddings=64", "--set", "max_steps=2",
        "--set", "batch_size=8", "--set", "micro_batch_size=8", "--set", "device=cpu", "--set", "save_every=0",
        "--set", "eval_every=0", "--set", "warmup_steps=1", "--set", "num_workers=0"]
FT = ["--set", "max_epochs=1", "--set", "batch_size=8", "--set", "device=cpu", "--set", "max_seq_length=32"]


def vocab_args(inp: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["train-vocab", "--input", str(inp), "--output", str(out), "--set", "vocab_size=300",
            "--set", "num_workers=1", *extra]


def pairs_args(inp: Path | str, out: Path | str, *extra: str, tok: Path | None = None) -> list[str]:
    return ["pairs", "--input", str(inp), "--tokenizer", str(tok or FX.tok), "--output", str(out),
            "--set", "max_seq_length=64", "--set", "num_workers=1", *extra]


def mask_args(inp: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["mask", "--input", str(inp), "--output", str(out), "--set", "num_workers=1", *extra]


def pretrain_args(data: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--output", str(out), *TINY, *extra]


RUN_SETTINGS = ["--set", "model.max_position_embeddings=64", "--set", "max_steps=5", "--set", "batch_size=8",
                "--set", "device=cpu", "--set", "save_every=0", "--set", "eval_every=0"]


def run_args(data: Path | str, out: Path | str, *extra: str) -> list[str]:
    """The fixture run's own command line (so that --resume sees the same config), then `extra`."""
    return ["pretrain", "--config", str(REPO / "configs" / "pretrain" / "tiny.yaml"), "--data", str(data),
            "--output", str(out), *RUN_SETTINGS, *extra]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def foreign_dir(path: Path, browser_manifest: bool = True) -> Path:
    """A directory of the user's that no bertcli stage may ever delete."""
    write(path / "thesis.tex", "\\documentclass{article} precious")
    write(path / "config.yaml", "lr: 1\n")
    if browser_manifest:
        write(path / "manifest.json", json.dumps({"manifest_version": 3, "name": "my extension"}))
    write(path / "metrics.jsonl", '{"step": 1, "loss": 2.0}\n')
    write(path / "final" / "notes.txt", "my notes")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def corpus_copy(d: Path, name: str = "corpus.txt") -> Path:
    return write(d / name, FX.corpus.read_bytes())


def set_manifest(artifact: Path, fn: Callable[[dict], object]) -> None:
    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    result = fn(manifest)
    path.write_text(json.dumps(result if isinstance(result, list) else manifest))


def rehash(artifact: Path, rel: str) -> None:
    """Record a rewritten file's size and sha256 in the manifest (so only deeper checks can catch it)."""
    data = (artifact / rel).read_bytes()

    def fix(m: dict) -> None:
        m["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    set_manifest(artifact, fix)


def pickle_payload_file(path: Path, marker: Path, as_numpy: bool = False) -> None:
    """A pickle that, if ever unpickled, creates `marker` (the classic malicious checkpoint)."""
    code = (
        "import os, pickle, sys\n"
        "class P:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
    )
    if as_numpy:
        code += (f"import numpy as np\na = np.empty(3, dtype=object); a[0] = P(); a[1] = 1; a[2] = 2\n"
                 f"np.save({str(path)!r}, a, allow_pickle=True)\n")
    else:
        code += (f"import torch\ntorch.save({{'bert.embeddings.word_embeddings.weight': P()}}, {str(path)!r})\n")
    subprocess.run([PY, "-c", code], check=True)


def tail_lines(text: str, n: int = 6) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and "it/s]" not in ln and "step/s" not in ln]
    return [ln[:300] for ln in lines[:n]]


# ================================================================ 1. config / YAML

ALIAS_BOMB = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
    f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]


def drop_overrides(args: list[str], keys: set[str]) -> list[str]:
    """The command line without the sweep's own --set/--input for the keys a hostile config sets (a --set would win
    over the file and hide what is being tested)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--set" and args[i + 1].split("=", 1)[0].split(".", 1)[0] in keys:
            i += 2
            continue
        if a == "--input" and "input" in keys:
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _yaml_case(name: str, text: str | bytes, expect: str = "refuse", names: tuple = (), stage: str = "train-vocab",
               timeout: float = 60) -> None:
    def setup(d: Path) -> Plan:
        cfg = write(d / "cfg.yaml", text)
        raw = text.decode("latin-1") if isinstance(text, bytes) else text
        keys = set(re.findall(r"^([A-Za-z_]\w*)\s*:", raw, flags=re.M))
        plan = _yaml_plan(d, cfg, stage)
        plan.args = drop_overrides(plan.args, keys)
        plan.names = [n.replace("CFG", str(cfg)) for n in names]
        return plan

    SCENARIOS.append(Scenario(f"yaml-{name}", stage, expect, setup, timeout))


def _yaml_plan(d: Path, cfg: Path, stage: str) -> Plan:
    if stage == "train-vocab":
        args = vocab_args(FX.corpus, d / "out", "--config", str(cfg))
    elif stage == "pretrain":
        args = pretrain_args(FX.masked, d / "out", "--config", str(cfg))
    elif stage == "finetune":
        args = ["finetune", "--model", str(FX.model), "--train", str(FX.train), "--output", str(d / "out"),
                *FT, "--config", str(cfg)]
    else:
        args = ["config", "show", stage.split(":", 1)[1], "--config", str(cfg)]
    return Plan(args=args, protect=[cfg], output=d / "out")


_yaml_case("alias-bomb", "\n".join(ALIAS_BOMB) + "\n", names=("CFG", "alias"))
_yaml_case("alias-bomb-config-show", "\n".join(ALIAS_BOMB) + "\n", stage="show:pairs", names=("CFG",))
_yaml_case("duplicate-key", "vocab_size: 300\nlowercase: true\nvocab_size: 400\n", names=("CFG:3", "vocab_size"))
_yaml_case("unknown-key", "vocab_sise: 300\n", names=("vocab_sise",))
_yaml_case("wrong-type-str", "vocab_size: lots\n", names=("vocab_size",))
_yaml_case("wrong-type-list", "vocab_size: [1, 2]\n", names=("vocab_size",))
_yaml_case("wrong-type-bool-for-int", "vocab_size: true\n", names=("vocab_size",))
_yaml_case("wrong-type-date", "seed: 2024-01-01\n", names=("seed",))
_yaml_case("input-is-mapping", "input: {a: 1}\n", names=("input",))
_yaml_case("special-tokens-not-list", "special_tokens: '[PAD]'\n", names=("special_tokens",))
_yaml_case("special-tokens-non-string", "special_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 5]\n",
           names=("special_tokens",))
_yaml_case("negative-seed", "seed: -1\n", names=("seed",))
_yaml_case("seed-2**70", f"seed: {2**70}\n", names=("seed",))
_yaml_case("int-5000-digits", "seed: " + "9" * 5000 + "\n", names=("seed",))
_yaml_case("float-1e400", "vocab_size: 1.0e+400\n", names=("vocab_size",))
_yaml_case("empty", "", expect="accept")
_yaml_case("comments-only", "# nothing here\n", expect="accept")
_yaml_case("list", "- vocab_size: 300\n- lowercase: true\n", names=("CFG",))
_yaml_case("scalar", "just a string\n", names=("CFG",))
_yaml_case("syntax-error", "vocab_size: [300\nlowercase: true\n", names=("CFG",))
_yaml_case("tab-indent", "model:\n\tpreset: tiny\n", names=("CFG",))
_yaml_case("non-utf8", b"vocab_size: 300\nlanguage: \xff\xfe\xfa\n", names=("CFG",))
_yaml_case("nul-byte", b"vocab_size: 300\x00\n", names=("CFG",))
_yaml_case("python-object-tag", "vocab_size: !!python/object/apply:os.system ['touch /tmp/yaml-pwned']\n",
           names=("CFG",))
_yaml_case("binary-tag", "language: !!binary aGVsbG8=\n", names=("language",))
_yaml_case("int-key", "1: 2\n", names=("CFG",))
_yaml_case("null-key", "~: 2\n", names=("CFG",))
_yaml_case("nested-100k-brackets", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", names=("CFG",))
_yaml_case("over-1MB", "# " + "x" * 1_200_000 + "\nvocab_size: 300\n", names=("CFG",))
_yaml_case("very-long-key", "k" * 100_000 + ": 1\n", names=("CFG",))
_yaml_case("multi-document", "vocab_size: 300\n---\nvocab_size: 400\n", names=("CFG",))
_yaml_case("pretrain-model-scalar", "model: 5\n", stage="pretrain", names=("model",))
_yaml_case("pretrain-preset-unknown", "model: {preset: giant}\n", stage="pretrain", names=("preset",))
_yaml_case("pretrain-lr-nan", "learning_rate: .nan\n", stage="pretrain", names=("learning_rate",))
_yaml_case("pretrain-lr-inf", "learning_rate: .inf\n", stage="pretrain", names=("learning_rate",))
_yaml_case("pretrain-eps-nan", "model: {layer_norm_eps: .nan}\n", stage="pretrain", names=("layer_norm_eps",))
_yaml_case("pretrain-time-budget-nan", "time_budget_s: .nan\n", stage="pretrain", names=("time_budget_s",))
_yaml_case("pretrain-heads-not-dividing", "model: {preset: null, hidden_size: 100, num_hidden_layers: 1, "
           "num_attention_heads: 3}\n", stage="pretrain", names=("num_attention_heads",))
_yaml_case("finetune-dev-fraction-nan", "dev_fraction: .nan\n", stage="finetune", names=("dev_fraction",))
_yaml_case("config-show-unknown-key", "vocab_sise: 1\n", expect="either", stage="show:train-vocab")


def _config_show_unknown(d: Path) -> Plan:
    return Plan(args=["config", "show", "no-such-stage"], names=["no-such-stage"])


sc("config-show-unknown-stage", "config show", "refuse")(_config_show_unknown)

# --set
simple("set-a.b.c-on-scalar", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab_size.b.c=1"), names=lambda d: ["vocab_size", "--set"],
       output=lambda d: d / "out")
simple("set-no-equals", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab_size"),
       names=lambda d: ["--set"], output=lambda d: d / "out")
simple("set-empty-key", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "=3"),
       names=lambda d: ["--set"], output=lambda d: d / "out")
simple("set-double-dot", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "a..b=1"),
       names=lambda d: ["--set"], output=lambda d: d / "out")
simple("set-huge-value", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "lowercase=" + "x" * 100_000),
       names=lambda d: ["lowercase"], output=lambda d: d / "out")
simple("set-value-with-newline", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "lowercase=yes\nand more"),
       names=lambda d: ["lowercase"], output=lambda d: d / "out")
simple("set-key-with-newline", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab\nsize=3"), output=lambda d: d / "out")
simple("set-negative-seed", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "seed=-1"),
       names=lambda d: ["seed"], output=lambda d: d / "out")
simple("set-seed-2**70", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", f"seed={2**70}"), names=lambda d: ["seed"],
       output=lambda d: d / "out")
simple("set-vocab-1e9", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab_size=1e9"),
       names=lambda d: ["vocab_size"], output=lambda d: d / "out")
simple("set-vocab-1000000000", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab_size=1000000000"), names=lambda d: ["vocab_size"],
       output=lambda d: d / "out")
simple("set-vocab-5", "train-vocab", "refuse", lambda d: vocab_args(FX.corpus, d / "out", "--set", "vocab_size=5"),
       names=lambda d: ["vocab_size"], output=lambda d: d / "out")
simple("set-num-workers-0", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "num_workers=0"), names=lambda d: ["num_workers"],
       output=lambda d: d / "out")
simple("set-language-bogus", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "language=english!"), names=lambda d: ["language"],
       output=lambda d: d / "out")
simple("set-special-tokens-missing-mask", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "special_tokens=['[PAD]','[UNK]','[CLS]','[SEP]']"),
       names=lambda d: ["special_tokens"], output=lambda d: d / "out")
simple("set-empty-subword-prefix", "train-vocab", "refuse",
       lambda d: vocab_args(FX.corpus, d / "out", "--set", "continuing_subword_prefix="),
       names=lambda d: ["continuing_subword_prefix"], output=lambda d: d / "out")
simple("pairs-max-seq-0", "pairs", "refuse", lambda d: pairs_args(FX.corpus, d / "out", "--set", "max_seq_length=0"),
       names=lambda d: ["max_seq_length"], output=lambda d: d / "out")
simple("pairs-max-seq-100000", "pairs", "refuse",
       lambda d: pairs_args(FX.corpus, d / "out", "--set", "max_seq_length=100000"),
       names=lambda d: ["max_seq_length"], output=lambda d: d / "out")
simple("pairs-short-seq-prob-nan", "pairs", "refuse",
       lambda d: pairs_args(FX.corpus, d / "out", "--set", "short_seq_prob=.nan"), names=lambda d: ["short_seq_prob"],
       output=lambda d: d / "out")
simple("pairs-shard-index-beyond", "pairs", "refuse",
       lambda d: pairs_args(FX.corpus, d / "out", "--shard-index", "5", "--num-shards", "2"),
       names=lambda d: ["shard_index"], output=lambda d: d / "out")
simple("mask-prob-nan", "mask", "refuse", lambda d: mask_args(FX.pairs, d / "out", "--set", "masked_lm_prob=.nan"),
       names=lambda d: ["masked_lm_prob"], output=lambda d: d / "out")
simple("mask-probs-above-1", "mask", "refuse",
       lambda d: mask_args(FX.pairs, d / "out", "--set", "mask_token_prob=0.9", "--set", "random_token_prob=0.5"),
       names=lambda d: ["random_token_prob"], output=lambda d: d / "out")
simple("pretrain-max-steps-2**70", "pretrain", "either",
       lambda d: pretrain_args(FX.masked, d / "out", "--set", f"max_steps={2**70}", "--set", "time_budget_s=3"),
       timeout=150)
simple("pretrain-batch-1e12", "pretrain", "refuse",
       lambda d: pretrain_args(FX.masked, d / "out", "--set", "batch_size=1000000000000"),
       names=lambda d: ["batch_size"], output=lambda d: d / "out")
simple("pretrain-hidden-act-bogus", "pretrain", "refuse",
       lambda d: pretrain_args(FX.masked, d / "out", "--set", "model.hidden_act=foo"),
       names=lambda d: ["model.hidden_act"], output=lambda d: d / "out")
simple("pretrain-max-pos-below-data", "pretrain", "refuse",
       lambda d: pretrain_args(FX.masked, d / "out", "--set", "model.max_position_embeddings=16"),
       names=lambda d: ["max_position_embeddings"], output=lambda d: d / "out")


def _config_special(kind: str):
    def setup(d: Path) -> Plan:
        if kind == "directory":
            path = d / "cfgdir"
            path.mkdir()
        elif kind == "fifo":
            path = d / "cfgpipe"
            os.mkfifo(path)
        else:
            path = Path("/dev/zero")
        return Plan(args=vocab_args(FX.corpus, d / "out", "--config", str(path)), names=[str(path)],
                    output=d / "out")

    return setup


for _kind in ("directory", "fifo", "dev-zero"):
    sc(f"config-is-{_kind}", "train-vocab", "refuse", timeout=30)(_config_special(_kind))
sc("config-missing", "train-vocab", "refuse")(
    lambda d: Plan(args=vocab_args(FX.corpus, d / "out", "--config", str(d / "nope.yaml")), names=["nope.yaml"],
                   output=d / "out"))


# ================================================================ 2. corpora


def _corpus_case(name: str, make: Callable[[Path], Path | str], expect: str, names: tuple = (), command: str =
                 "train-vocab", extra: tuple = (), timeout: float = 120, skip: Callable[[], Optional[str]] = None):
    def setup(d: Path) -> Plan:
        if skip and skip():
            return Plan(args=[], skip=skip())
        inp = make(d)
        if command == "train-vocab":
            args = vocab_args(inp, d / "out", *extra)
        else:
            args = pairs_args(inp, d / "out", *extra)
        prot = [Path(inp)] if Path(inp).exists() and not Path(inp).is_fifo() else []
        return Plan(args=args, protect=prot, output=d / "out", names=[n.replace("INP", str(inp)) for n in names])

    SCENARIOS.append(Scenario(f"corpus-{name}-{command}", command, expect, setup, timeout))


def _no_module(name: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        r = subprocess.run([PY, "-c", f"import {name}"], capture_output=True)
        return None if r.returncode == 0 else f"{name} is not installed"

    return check


def _utf16(d: Path) -> Path:
    return write(d / "u16.txt", ("Hello world.\nSecond line here.\n" * 20).encode("utf-16"))


def _bad_utf8(d: Path) -> Path:
    return write(d / "bad.txt", FX.corpus.read_bytes()[:3000] + b"\nthis line \xff\xfe is broken\n" +
                 FX.corpus.read_bytes()[3000:6000])


def _binary(d: Path) -> Path:
    return write(d / "blob.txt", Path(PY).resolve().read_bytes()[:65536])


def _long_line(d: Path) -> Path:
    words = ("hacker kludge cruft frob foo bar baz quux " * 130_000)[:5_000_000]
    return write(d / "longline.txt", words + "\n")


def _trunc_gz(d: Path) -> Path:
    data = gzip.compress(FX.corpus.read_bytes())
    return write(d / "corpus.txt.gz", data[: len(data) // 2])


def _trunc_zst(d: Path) -> Path:
    import zstandard  # noqa: F401 - checked by skip

    data = zstandard.ZstdCompressor().compress(FX.corpus.read_bytes())
    return write(d / "corpus.txt.zst", data[: len(data) // 2])


def _parquet_no_column(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = d / "corpus.parquet"
    pq.write_table(pa.table({"body": ["one sentence.", "another one."] * 20}), path)
    return path


def _gz_bomb(d: Path) -> Path:
    return write(d / "bomb.txt.gz", gzip.compress(b"a" * 20_000_000, compresslevel=9))


def _symlink_loop(d: Path) -> Path:
    root = d / "corpusdir"
    corpus_copy(root, "a.txt")
    (root / "loop").symlink_to(root)
    (root / "dangling.txt").symlink_to(d / "nowhere.txt")
    return root


def _hidden_only(d: Path) -> Path:
    root = d / "corpusdir"
    write(root / ".hidden.txt", FX.corpus.read_text())
    write(root / "data.json", '{"a": 1}')
    return root


def _missing_newline_name(d: Path) -> str:
    return str(d / "bad\nname.txt")


_corpus_case("missing", lambda d: d / "nope.txt", "refuse", ("INP",))
_corpus_case("missing-name-with-newline", _missing_newline_name, "refuse")
_corpus_case("empty-file", lambda d: write(d / "empty.txt", ""), "refuse", ("INP",))
_corpus_case("whitespace-only", lambda d: write(d / "ws.txt", "   \n\t\n\n  \n"), "refuse", ("INP",))
_corpus_case("empty-dir", lambda d: (d / "emptydir").mkdir() or d / "emptydir", "refuse", ("INP",))
_corpus_case("glob-matching-nothing", lambda d: str(d / "*.nothing"), "refuse")
_corpus_case("dir-hidden-and-json-only", _hidden_only, "refuse", ("INP",))
_corpus_case("binary", _binary, "refuse", ("INP",))
_corpus_case("binary", _binary, "refuse", ("INP",), command="pairs")
_corpus_case("utf16", _utf16, "refuse", ("INP", "UTF-16"))
_corpus_case("json-lines-named-txt",
             lambda d: write(d / "dump.txt", '{"text": "hello there."}\n{"text": "more text."}\n'), "refuse",
             ("INP:1", "JSON"))
_corpus_case("json-lines-named-txt", lambda d: write(d / "dump.txt", '{"text": "hello there."}\n'), "refuse",
             ("INP:1",), command="pairs")
_corpus_case("json-lines-named-txt-format-text",
             lambda d: write(d / "dump.txt", '{"text": "hello there."}\n' * 20), "accept",
             extra=("--set", "format=text"))
_corpus_case("invalid-utf8-strict", _bad_utf8, "refuse", ("INP:",))
_corpus_case("invalid-utf8-strict", _bad_utf8, "refuse", ("INP:",), command="pairs")
_corpus_case("invalid-utf8-replace", _bad_utf8, "accept", extra=("--set", "errors=replace"))
_corpus_case("5MB-single-line", _long_line, "accept", timeout=120)
_corpus_case("5MB-single-line", _long_line, "either", command="pairs", timeout=120)
_corpus_case("jsonl-100k-nested-brackets",
             lambda d: write(d / "deep.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n"), "refuse",
             ("INP:1",))
_corpus_case("jsonl-5000-digit-number",
             lambda d: write(d / "digits.jsonl", '{"text": "a b c", "n": ' + "9" * 5000 + "}\n"), "refuse", ("INP:1",))
_corpus_case("jsonl-no-text-field",
             lambda d: write(d / "c.jsonl", '{"text": "hello there."}\n{"body": "no text here"}\n'), "refuse",
             ("INP:2", "text"))
_corpus_case("jsonl-text-not-string",
             lambda d: write(d / "c.jsonl", '{"text": "hello there."}\n{"text": 42}\n'), "refuse", ("INP:2",))
_corpus_case("jsonl-text-null", lambda d: write(d / "c.jsonl", '{"text": null}\n'), "refuse", ("INP:1",))
_corpus_case("jsonl-not-object", lambda d: write(d / "c.jsonl", '["a list", "of text"]\n'), "refuse", ("INP:1",))
_corpus_case("jsonl-garbage", lambda d: write(d / "c.jsonl", '{"text": "ok"}\n{not json\n'), "refuse", ("INP:2",))
_corpus_case("jsonl-no-text-field", lambda d: write(d / "c.jsonl", '{"body": "x"}\n'), "refuse", command="pairs")
_corpus_case("truncated-gz", _trunc_gz, "refuse", ("INP",))
_corpus_case("truncated-gz", _trunc_gz, "refuse", ("INP",), command="pairs")
_corpus_case("truncated-zst", _trunc_zst, "refuse", ("INP",), skip=_no_module("zstandard"))
_corpus_case("gz-bomb-20MB-one-line", _gz_bomb, "either", timeout=120)
_corpus_case("parquet-without-column", _parquet_no_column, "refuse", ("text",), skip=_no_module("pyarrow"))
_corpus_case("parquet-without-column", _parquet_no_column, "refuse", ("text",), command="pairs",
             skip=_no_module("pyarrow"))
_corpus_case("emoji-only", lambda d: write(d / "emoji.txt", "\n\n".join("🙂🙃 😀\n😀 🙂 🎉" for _ in range(30))),
             "either")
_corpus_case("emoji-only", lambda d: write(d / "emoji.txt", "\n\n".join("🙂🙃 😀\n😀 🙂 🎉" for _ in range(30))),
             "either", command="pairs")
_corpus_case("one-document", lambda d: write(d / "one.txt", "\n".join(FX.corpus.read_text().split("\n\n")[0:1])
                                             + "\n"), "either", command="pairs")
_corpus_case("one-sentence", lambda d: write(d / "one.txt", "just one sentence here.\n"), "either", command="pairs")
_corpus_case("nul-bytes", lambda d: write(d / "nul.txt", FX.corpus.read_bytes()[:5000].replace(b" ", b"\0", 3)),
             "accept")
_corpus_case("cr-only-line-ends", lambda d: write(d / "cr.txt", FX.corpus.read_bytes()[:8000].replace(b"\n", b"\r")),
             "accept")
_corpus_case("fifo", lambda d: (os.mkfifo(d / "pipe"), d / "pipe")[1], "refuse", ("INP",), timeout=30)
_corpus_case("dev-zero", lambda d: "/dev/zero", "refuse", ("/dev/zero",), timeout=30)
_corpus_case("symlink-loop-dir", _symlink_loop, "either", timeout=60)
_corpus_case("plain-text-named-gz", lambda d: write(d / "plain.txt.gz", FX.corpus.read_bytes()), "either")
_corpus_case("document-per-line-long", lambda d: write(d / "docs.txt", ("One. Two three. " * 20000) + "\n"),
             "either", extra=("--set", "layout=document-per-line"), timeout=120)


def _corpus_is_artifact(d: Path) -> Plan:
    return Plan(args=vocab_args(FX.pairs, d / "out"), protect=[FX.pairs], output=d / "out")


sc("corpus-is-a-pairs-artifact", "train-vocab", "refuse")(_corpus_is_artifact)


# ================================================================ 3. outputs


@sc("out-equals-input-file", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    c = corpus_copy(d)
    return Plan(args=vocab_args(c, c, "--overwrite"), protect=[c], names=["input"])


@sc("out-inside-input-dir", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    c = corpus_copy(d / "corpus", "a.txt")
    return Plan(args=vocab_args(c.parent, c.parent / "tok", "--overwrite"), protect=[c.parent], names=["inside"])


@sc("out-holds-input-file", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    c = corpus_copy(d / "corpus", "a.txt")
    return Plan(args=vocab_args(c, c.parent, "--overwrite"), protect=[c.parent], names=["input"])


@sc("out-is-bertcli-tokenizer-holding-input", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    tok = copy_tree(FX.tok, d / "tok")
    return Plan(args=vocab_args(tok / "vocab.txt", tok, "--overwrite"), protect=[tok], names=["input"])


@sc("out-equals-tokenizer", "pairs", "refuse")
def _(d: Path) -> Plan:
    tok = copy_tree(FX.tok, d / "tok")
    return Plan(args=pairs_args(FX.corpus, tok, "--overwrite", tok=tok), protect=[tok], names=["input"])


@sc("out-inside-tokenizer", "pairs", "refuse")
def _(d: Path) -> Plan:
    tok = copy_tree(FX.tok, d / "tok")
    return Plan(args=pairs_args(FX.corpus, tok / "pairs", tok=tok), protect=[tok], output=tok / "pairs")


@sc("out-is-pairs-holding-its-corpus", "pairs", "refuse")
def _(d: Path) -> Plan:
    p = copy_tree(FX.pairs, d / "pairs")
    return Plan(args=pairs_args(p / "tokenizer" / "vocab.txt", p, "--overwrite"), protect=[p], names=["input"])


@sc("out-equals-input", "mask", "refuse")
def _(d: Path) -> Plan:
    p = copy_tree(FX.pairs, d / "pairs")
    return Plan(args=mask_args(p, p, "--overwrite"), protect=[p], names=["input"])


@sc("out-inside-input", "mask", "refuse")
def _(d: Path) -> Plan:
    p = copy_tree(FX.pairs, d / "pairs")
    return Plan(args=mask_args(p, p / "masked"), protect=[p], output=p / "masked")


@sc("out-equals-data", "pretrain", "refuse")
def _(d: Path) -> Plan:
    m = copy_tree(FX.masked, d / "masked")
    return Plan(args=pretrain_args(m, m, "--overwrite"), protect=[m], names=["input"])


@sc("out-inside-data", "pretrain", "refuse")
def _(d: Path) -> Plan:
    m = copy_tree(FX.masked, d / "masked")
    return Plan(args=pretrain_args(m, m / "run"), protect=[m], output=m / "run")


@sc("out-equals-model", "finetune", "refuse")
def _(d: Path) -> Plan:
    m = copy_tree(FX.model, d / "model")
    return Plan(args=["finetune", "--model", str(m), "--train", str(FX.train), "--output", str(m), *FT,
                      "--overwrite"], protect=[m])


@sc("out-equals-train-file", "finetune", "refuse")
def _(d: Path) -> Plan:
    t = write(d / "train.jsonl", FX.train.read_bytes())
    return Plan(args=["finetune", "--model", str(FX.model), "--train", str(t), "--output", str(t), *FT,
                      "--overwrite"], protect=[t])


for _cmd in ("train-vocab", "pairs", "mask", "pretrain", "finetune"):
    for _ow in ((True,) if _cmd == "pretrain" else (False, True)):
        def _foreign(d: Path, cmd=_cmd, ow=_ow) -> Plan:
            out = foreign_dir(d / "myproject")
            extra = ["--overwrite"] if ow else []
            if cmd == "train-vocab":
                args = vocab_args(FX.corpus, out, *extra)
            elif cmd == "pairs":
                args = pairs_args(FX.corpus, out, *extra)
            elif cmd == "mask":
                args = mask_args(FX.pairs, out, *extra)
            elif cmd == "pretrain":
                args = pretrain_args(FX.masked, out, *extra)
            else:
                args = ["finetune", "--model", str(FX.model), "--train", str(FX.train), "--output", str(out), *FT,
                        *extra]
            return Plan(args=args, protect=[out], names=[str(out)])

        sc(f"out-foreign-dir{'-overwrite' if _ow else ''}-{_cmd}", _cmd, "refuse")(_foreign)


@sc("out-foreign-dir-resume", "pretrain", "refuse")
def _(d: Path) -> Plan:
    out = foreign_dir(d / "myproject")
    return Plan(args=pretrain_args(FX.masked, out, "--resume"), protect=[out], names=[str(out)])


@sc("out-foreign-dir-no-manifest-overwrite", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    out = foreign_dir(d / "myproject", browser_manifest=False)
    return Plan(args=vocab_args(FX.corpus, out, "--overwrite"), protect=[out], names=[str(out)])


@sc("out-artifact-with-user-file-overwrite", "pairs", "refuse")
def _(d: Path) -> Plan:
    p = copy_tree(FX.pairs, d / "pairs")
    write(p / "notes.txt", "my notes")
    return Plan(args=pairs_args(FX.corpus, p, "--overwrite"), protect=[p], names=["notes.txt"])


@sc("out-artifact-overwrite-ok", "mask", "accept")
def _(d: Path) -> Plan:
    out = copy_tree(FX.masked, d / "masked")
    return Plan(args=mask_args(FX.pairs, out, "--overwrite"), protect=[FX.pairs])


@sc("out-existing-artifact-no-overwrite", "mask", "refuse")
def _(d: Path) -> Plan:
    out = copy_tree(FX.masked, d / "masked")
    return Plan(args=mask_args(FX.pairs, out), protect=[out], names=[str(out)])


@sc("out-existing-run-no-flag", "pretrain", "refuse")
def _(d: Path) -> Plan:
    out = copy_tree(FX.run, d / "run")
    return Plan(args=pretrain_args(FX.masked, out), protect=[out], names=[str(out)])


@sc("out-file-in-the-way", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    f = write(d / "tok", "i am a file")
    return Plan(args=vocab_args(FX.corpus, f), protect=[f], names=[str(f)])


@sc("out-file-in-the-way-overwrite", "pairs", "refuse")
def _(d: Path) -> Plan:
    f = write(d / "pairs", "i am a file")
    return Plan(args=pairs_args(FX.corpus, f, "--overwrite"), protect=[f], names=[str(f)])


@sc("out-parent-is-file", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    f = write(d / "a-file", "x")
    return Plan(args=vocab_args(FX.corpus, f / "tok"), protect=[f], names=[str(f)])


@sc("out-parent-is-file-mask", "mask", "refuse")
def _(d: Path) -> Plan:
    f = write(d / "a-file", "x")
    return Plan(args=mask_args(FX.pairs, f / "masked"), protect=[f], names=[str(f)])


@sc("out-symlink-to-foreign-overwrite", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    target = foreign_dir(d / "myproject")
    link = d / "tok"
    link.symlink_to(target)
    return Plan(args=vocab_args(FX.corpus, link, "--overwrite"), protect=[target, link])


@sc("out-symlink-to-artifact-overwrite", "train-vocab", "accept")
def _(d: Path) -> Plan:
    target = d / "real-tok"
    shutil.copytree(FX.tok, target)
    link = d / "tok"
    link.symlink_to(target)

    def check(rc, out, err, secs) -> Optional[str]:
        if not link.is_symlink():
            return "the symlink was replaced by a directory"
        if not (target / "manifest.json").is_file():
            return "the link's target has no manifest.json"
        return None

    return Plan(args=vocab_args(FX.corpus, link, "--overwrite"), check=check)


@sc("out-dangling-symlink", "train-vocab", "either")
def _(d: Path) -> Plan:
    link = d / "tok"
    link.symlink_to(d / "nowhere")
    return Plan(args=vocab_args(FX.corpus, link))


@sc("out-read-only-parent", "train-vocab", "refuse")
def _(d: Path) -> Plan:
    ro = d / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        (ro / "probe").write_text("x")
        (ro / "probe").unlink()
        os.chmod(ro, 0o755)
        return Plan(args=[], skip="running as root: chmod 555 does not stop writes")
    except PermissionError:
        return Plan(args=vocab_args(FX.corpus, ro / "tok"), output=ro / "tok", names=[str(ro)])


@sc("out-dir-is-html-dir", "attention", "refuse", timeout=90)
def _(d: Path) -> Plan:
    out = d / "page.html"
    write(out / "keep.txt", "keep me")
    return Plan(args=["attention", "--model", str(FX.model), "--device", "cpu", "--out", str(out), "hello world"],
                protect=[out], names=[str(out)])


@sc("out-dir-is-html-dir-overwrite", "attention", "refuse", timeout=90)
def _(d: Path) -> Plan:
    out = d / "page.html"
    write(out / "keep.txt", "keep me")
    return Plan(args=["attention", "--model", str(FX.model), "--device", "cpu", "--out", str(out), "--overwrite",
                      "hello world"], protect=[out], names=[str(out)])


@sc("out-existing-file-no-overwrite", "attention", "refuse", timeout=90)
def _(d: Path) -> Plan:
    out = write(d / "mine.html", "<html>my own page</html>")
    return Plan(args=["attention", "--model", str(FX.model), "--device", "cpu", "--out", str(out), "hi"],
                protect=[out], names=[str(out)])


@sc("out-not-html", "attention", "refuse", timeout=90)
def _(d: Path) -> Plan:
    out = write(d / "thesis.tex", "precious")
    return Plan(args=["attention", "--model", str(FX.model), "--device", "cpu", "--out", str(out), "--overwrite",
                      "hi"], protect=[out], names=[str(out)])


@sc("out-missing-parent", "attention", "refuse", timeout=90)
def _(d: Path) -> Plan:
    return Plan(args=["attention", "--model", str(FX.model), "--device", "cpu", "--out", str(d / "no" / "a.html"),
                      "hi"], output=d / "no")


@sc("plot-output-existing-user-pdf", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    out = write(d / "report.pdf", "%PDF-1.4 my report, not a plot")
    return Plan(args=["plot", str(run), "--output", str(out)], protect=[out, run / "metrics.jsonl"],
                names=[str(out)])


@sc("plot-output-is-metrics-jsonl", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    return Plan(args=["plot", str(run), "--output", str(run / "metrics.jsonl")], protect=[run / "metrics.jsonl"])


@sc("plot-output-unknown-suffix", "plot", "either", timeout=90)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    return Plan(args=["plot", str(run), "--output", str(d / "curves.xyz")], output=d / "curves.xyz",
                protect=[run / "metrics.jsonl"])


@sc("plot-output-missing-dir", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    return Plan(args=["plot", str(run), "--output", str(d / "no" / "c.png")], output=d / "no")


@sc("plot-output-is-dir", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    out = d / "c.png"
    write(out / "keep.txt", "keep")
    return Plan(args=["plot", str(run), "--output", str(out)], protect=[out])


@sc("plot-no-metrics", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    (d / "run").mkdir()
    return Plan(args=["plot", str(d / "run")], names=["metrics.jsonl"])


@sc("plot-empty-metrics", "plot", "either", timeout=90)
def _(d: Path) -> Plan:
    write(d / "run" / "metrics.jsonl", "")
    return Plan(args=["plot", str(d / "run")])


@sc("plot-metrics-garbage", "plot", "refuse", timeout=90)
def _(d: Path) -> Plan:
    write(d / "run" / "metrics.jsonl", '{"step": 1, "mlm_loss": 2.0}\n\x00\x01garbage\n[1,2]\n')
    return Plan(args=["plot", str(d / "run")], names=["metrics.jsonl:2"])


@sc("plot-metrics-strings", "plot", "either", timeout=90)
def _(d: Path) -> Plan:
    write(d / "run" / "metrics.jsonl", '{"step": 1, "mlm_loss": "high"}\n{"step": 2, "mlm_loss": 1.0}\n')
    return Plan(args=["plot", str(d / "run")], names=["metrics.jsonl:1"])


# ================================================================ 4. artifacts


def _damaged(name: str, damage: Callable[[Path], None], command: str, expect: str = "refuse", names: tuple = (),
             env: dict | None = None, timeout: float = 120) -> None:
    def setup(d: Path) -> Plan:
        src = FX.masked if name.startswith("masked-") else FX.pairs
        art = copy_tree(src, d / "art")
        damage(art)
        if command == "mask":
            args = mask_args(art, d / "out")
        elif command == "pretrain":
            args = pretrain_args(art, d / "out")
        elif command == "evaluate":
            args = ["evaluate", "--model", str(FX.model), "--data", str(art), "--device", "cpu"]
        else:
            args = ["inspect", str(art)]
        return Plan(args=args, output=d / "out" if command in ("mask", "pretrain") else None, env=env or {},
                    names=[n.replace("ART", str(art)) for n in names], never=[d / PAYLOAD_MARK])

    SCENARIOS.append(Scenario(f"artifact-{name}-{command}", command, expect, setup, timeout))


def _rewrite_in_place(art: Path) -> None:
    import numpy as np

    shard = art / "shard-00000.input_ids.npy"
    ids = np.load(shard)
    ids[5] = ids[6]
    np.save(shard, ids)


def _truncate(art: Path) -> None:
    shard = art / "shard-00000.input_ids.npy"
    shard.write_bytes(shard.read_bytes()[:200])


def _truncate_rehashed(art: Path) -> None:
    _truncate(art)
    rehash(art, "shard-00000.input_ids.npy")


def _delete(art: Path) -> None:
    (art / "shard-00000.input_ids.npy").unlink()


def _manifest_list(art: Path) -> None:
    (art / "manifest.json").write_text("[1, 2]")


def _manifest_garbage(art: Path) -> None:
    (art / "manifest.json").write_bytes(b"\xff\xfe{garbage")


def _manifest_missing(art: Path) -> None:
    (art / "manifest.json").unlink()


def _no_dtype(art: Path) -> None:
    set_manifest(art, lambda m: m.pop("token_dtype"))


def _dtype_object(art: Path) -> None:
    set_manifest(art, lambda m: m.__setitem__("token_dtype", "object"))


def _understate_len(art: Path) -> None:
    set_manifest(art, lambda m: m.__setitem__("max_seq_length", 8))


def _max_len_string(art: Path) -> None:
    set_manifest(art, lambda m: m.__setitem__("max_seq_length", "64"))


def _files_not_dict(art: Path) -> None:
    set_manifest(art, lambda m: m.__setitem__("files", "all of them"))


def _file_outside(art: Path) -> None:
    def fix(m: dict) -> None:
        m["files"]["../../../../../../etc/hostname"] = {"bytes": 1, "sha256": "0" * 64}

    set_manifest(art, fix)


def _stage_bogus(art: Path) -> None:
    set_manifest(art, lambda m: m.__setitem__("stage", "bogus"))


def _ids_beyond_vocab(art: Path) -> None:
    import numpy as np

    shard = art / "shard-00000.input_ids.npy"
    ids = np.load(shard)
    ids[3] = 60000
    np.save(shard, ids)
    rehash(art, "shard-00000.input_ids.npy")


def _offsets_broken(art: Path) -> None:
    import numpy as np

    path = art / "shard-00000.input_ids.offsets.npy"
    off = np.load(path)
    off[len(off) // 2] = off[-1] * 10
    np.save(path, off)
    rehash(art, "shard-00000.input_ids.offsets.npy")


def _pickled_shard(art: Path) -> None:
    rel = "shard-00000.input_ids.npy"
    pickle_payload_file(art / rel, art.parent / PAYLOAD_MARK, as_numpy=True)
    rehash(art, rel)


def _tokenizer_swapped(art: Path) -> None:
    shutil.rmtree(art / "tokenizer")
    shutil.copytree(FX.tok2, art / "tokenizer")
    for p in (art / "tokenizer").iterdir():
        if p.name not in ("manifest.json", "config.yaml"):
            rehash(art, f"tokenizer/{p.name}")
        else:
            p.unlink()


def _masked_positions_outside(art: Path) -> None:
    import numpy as np

    path = art / "shard-00000.masked_positions.npy"
    pos = np.load(path)
    pos[0] = 5000
    np.save(path, pos)
    rehash(art, "shard-00000.masked_positions.npy")


_damaged("rewritten-in-place", _rewrite_in_place, "mask", names=("sha256",))
_damaged("truncated-shard", _truncate, "mask", names=("shard-00000",))
_damaged("truncated-shard-rehashed", _truncate_rehashed, "mask", names=("shard-00000",))
_damaged("truncated-shard", _truncate, "inspect", expect="either")
_damaged("deleted-shard", _delete, "mask", names=("missing",))
_damaged("deleted-shard", _delete, "inspect", expect="either")
_damaged("manifest-list", _manifest_list, "mask", names=("not a JSON object",))
_damaged("manifest-list", _manifest_list, "inspect", names=("manifest.json",))
_damaged("manifest-garbage", _manifest_garbage, "mask", names=("manifest.json",))
_damaged("manifest-garbage", _manifest_garbage, "inspect", names=("manifest.json",))
_damaged("manifest-missing", _manifest_missing, "mask", names=("manifest.json",))
_damaged("manifest-no-token-dtype", _no_dtype, "mask", names=("token_dtype",))
_damaged("manifest-token-dtype-object", _dtype_object, "mask", expect="either")
_damaged("manifest-understates-max-seq", _understate_len, "mask", names=("max_seq_length",))
_damaged("manifest-max-seq-string", _max_len_string, "mask", names=("max_seq_length",))
_damaged("manifest-files-not-dict", _files_not_dict, "mask", names=("files",))
_damaged("manifest-lists-file-outside", _file_outside, "mask")
_damaged("manifest-stage-bogus", _stage_bogus, "mask", names=("stage",))
_damaged("manifest-stage-bogus", _stage_bogus, "inspect", expect="either")
_damaged("ids-beyond-vocab", _ids_beyond_vocab, "mask", names=("vocab_size",))
_damaged("ids-beyond-vocab", _ids_beyond_vocab, "evaluate", names=("vocab_size",))
_damaged("offsets-broken", _offsets_broken, "mask", names=("offsets",))
_damaged("pickled-npy-shard", _pickled_shard, "mask")
_damaged("pickled-npy-shard", _pickled_shard, "inspect", expect="either")
_damaged("tokenizer-swapped", _tokenizer_swapped, "mask", names=("tokenizer",))
_damaged("masked-positions-outside", _masked_positions_outside, "pretrain")
_damaged("ids-beyond-vocab-sizes-only", _ids_beyond_vocab, "mask", names=("vocab_size",),
         env={"BERTCLI_VERIFY_MAX_BYTES": "0"})
_damaged("env-verify-limit-not-a-number", lambda art: None, "mask", names=("BERTCLI_VERIFY_MAX_BYTES",),
         env={"BERTCLI_VERIFY_MAX_BYTES": "lots"})


def _wrong_stage(name: str, command: str, args: Callable[[Path], list[str]], expect: str = "refuse",
                 timeout: float = 120) -> None:
    def setup(d: Path) -> Plan:
        return Plan(args=args(d), output=d / "out")

    SCENARIOS.append(Scenario(f"wrong-stage-{name}", command, expect, setup, timeout))


_wrong_stage("mask-a-masked-artifact", "mask", lambda d: mask_args(FX.masked, d / "out"))
_wrong_stage("mask-a-tokenizer", "mask", lambda d: mask_args(FX.tok, d / "out"))
_wrong_stage("mask-a-run", "mask", lambda d: mask_args(FX.run, d / "out"))
_wrong_stage("mask-missing", "mask", lambda d: mask_args(d / "nope", d / "out"))
_wrong_stage("mask-a-file", "mask", lambda d: mask_args(FX.corpus, d / "out"))
_wrong_stage("pretrain-a-tokenizer", "pretrain", lambda d: pretrain_args(FX.tok, d / "out"))
_wrong_stage("pairs-tokenizer-is-pairs", "pairs", lambda d: pairs_args(FX.corpus, d / "out", tok=FX.pairs),
             expect="either")
_wrong_stage("pairs-tokenizer-is-corpus-file", "pairs", lambda d: pairs_args(FX.corpus, d / "out", tok=FX.corpus))
_wrong_stage("pairs-tokenizer-missing", "pairs", lambda d: pairs_args(FX.corpus, d / "out", tok=d / "nope"))
_wrong_stage("pairs-tokenizer-is-run", "pairs", lambda d: pairs_args(FX.corpus, d / "out", tok=FX.run))
_wrong_stage("inspect-foreign-dir", "inspect", lambda d: ["inspect", str(foreign_dir(d / "proj"))])
_wrong_stage("inspect-a-file", "inspect", lambda d: ["inspect", str(FX.corpus)])
_wrong_stage("inspect-empty-dir", "inspect", lambda d: ((d / "e").mkdir(), ["inspect", str(d / "e")])[1])
_wrong_stage("inspect-run", "inspect", lambda d: ["inspect", str(FX.run)], expect="either")
_wrong_stage("inspect-many-examples", "inspect", lambda d: ["inspect", str(FX.masked), "-n", "100000"],
             expect="accept")


@sc("resume-other-vocabulary", "pretrain", "refuse", timeout=150)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    (run / "final").rename(run / "step-00000005")
    (run / "manifest.json").unlink()
    return Plan(args=run_args(FX.pairs2, run, "--resume", "--set", "max_steps=6"), protect=[run],
                names=["--resume"])


@sc("resume-other-data-same-vocab", "pretrain", "refuse", timeout=150)
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    (run / "final").rename(run / "step-00000005")
    (run / "manifest.json").unlink()
    return Plan(args=run_args(FX.pairs, run, "--resume", "--set", "max_steps=6"), protect=[run],
                names=["--resume"])


@sc("resume-poisoned-rng-pt", "pretrain", "either", timeout=150,
    note="a malicious rng.pt/optimizer.pt in a checkpoint: must never be unpickled")
def _(d: Path) -> Plan:
    run = copy_tree(FX.run, d / "run")
    (run / "final").rename(run / "step-00000005")
    (run / "manifest.json").unlink()
    marker = d / PAYLOAD_MARK
    ckpt = run / "step-00000005"
    listing = json.loads((ckpt / "checkpoint.json").read_text())
    for rel in ("training_state/rng.pt", "training_state/optimizer.pt"):
        pickle_payload_file(ckpt / rel, marker)
        data = (ckpt / rel).read_bytes()  # recorded, so that only the unpickling itself can refuse it
        listing["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "checkpoint.json").write_text(json.dumps(listing))
    return Plan(args=run_args(FX.masked, run, "--resume", "--set", "max_steps=6"), never=[marker])


@sc("evaluate-other-tokenizer-data", "evaluate", "refuse", timeout=120)
def _(d: Path) -> Plan:
    return Plan(args=["evaluate", "--model", str(FX.model), "--data", str(FX.pairs2), "--device", "cpu"],
                names=["tokenizer"])


@sc("init-from-pickled-model", "pretrain", "refuse", timeout=150)
def _(d: Path) -> Plan:
    m = _pickled_model(d)
    return Plan(args=pretrain_args(FX.masked, d / "out", "--set", f"init_from={m}"), never=[d / PAYLOAD_MARK],
                output=d / "out", names=["pickled"])


@sc("pretrain-device-cuda", "pretrain", "refuse", timeout=120)
def _(d: Path) -> Plan:
    return Plan(args=pretrain_args(FX.masked, d / "out", "--set", "device=cuda"), output=d / "out",
                names=["cuda"])


@sc("pretrain-emoji-data-without-targets", "pretrain", "refuse", timeout=150)
def _(d: Path) -> Plan:
    corpus = write(d / "emoji.txt", "\n\n".join("🙂🙃 😀\n😀 🙂" for _ in range(40)) + "\n")
    pairs = d / "pairs"
    rc, out, err, _ = run_bert(pairs_args(corpus, pairs, "--set", "max_seq_length=16"), d, 60)
    if rc != 0:
        return Plan(args=[], skip=f"could not build emoji pairs: {err[-200:]}")
    return Plan(args=pretrain_args(pairs, d / "out"), output=d / "out", names=["prediction target"])


# ================================================================ 5. models


def _pickled_model(d: Path) -> Path:
    m = copy_tree(FX.model, d / "pickled-model")
    (m / "model.safetensors").unlink()
    pickle_payload_file(m / "pytorch_model.bin", d / PAYLOAD_MARK)
    return m


def _model_variant(kind: str, d: Path) -> Path:
    if kind == "no-config":
        m = copy_tree(FX.model, d / "m")
        (m / "config.json").unlink()
    elif kind == "non-bert":
        m = copy_tree(FX.model, d / "m")
        cfg = json.loads((m / "config.json").read_text())
        cfg["model_type"] = "gpt2"
        cfg["architectures"] = ["GPT2LMHeadModel"]
        (m / "config.json").write_text(json.dumps(cfg))
    elif kind == "config-garbage":
        m = copy_tree(FX.model, d / "m")
        (m / "config.json").write_bytes(b"\x00\xffnot json")
    elif kind == "config-list":
        m = copy_tree(FX.model, d / "m")
        (m / "config.json").write_text("[]")
    elif kind == "config-bad-values":
        m = copy_tree(FX.model, d / "m")
        cfg = json.loads((m / "config.json").read_text())
        cfg["hidden_size"] = -5
        cfg["num_attention_heads"] = 0
        (m / "config.json").write_text(json.dumps(cfg))
    elif kind == "config-vocab-too-small":
        m = copy_tree(FX.model, d / "m")
        cfg = json.loads((m / "config.json").read_text())
        cfg["vocab_size"] = 10
        (m / "config.json").write_text(json.dumps(cfg))
    elif kind == "pickled":
        m = _pickled_model(d)
    elif kind == "truncated-safetensors":
        m = copy_tree(FX.model, d / "m")
        w = m / "model.safetensors"
        w.write_bytes(w.read_bytes()[:5000])
    elif kind == "safetensors-garbage-header":
        m = copy_tree(FX.model, d / "m")
        w = m / "model.safetensors"
        w.write_bytes((2**62).to_bytes(8, "little") + b"{" * 100)
    elif kind == "no-tokenizer":
        m = copy_tree(FX.model, d / "m")
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            (m / name).unlink(missing_ok=True)
    elif kind == "tokenizer-garbage":
        m = copy_tree(FX.model, d / "m")
        (m / "tokenizer.json").write_text("{not json")
    elif kind == "no-mask-token":
        m = copy_tree(FX.model, d / "m")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = m / name
            if p.is_file():
                data = json.loads(p.read_text())
                data["mask_token"] = None
                p.write_text(json.dumps(data))
    elif kind == "a-file":
        m = FX.corpus
    elif kind == "tokenizer-dir":
        m = FX.tok
    elif kind == "run-without-final":
        m = copy_tree(FX.run, d / "m")
        shutil.rmtree(m / "final")
    elif kind == "missing":
        m = d / "nope"
    elif kind == "classifier":
        m = FX.clf
    else:
        raise ValueError(kind)
    return m


def _model_cmd(command: str, m: Path, d: Path) -> list[str]:
    if command == "fill-mask":
        return ["fill-mask", "--model", str(m), "--device", "cpu", "The [MASK] wrote code."]
    if command == "predict-nsp":
        return ["predict-nsp", "--model", str(m), "--device", "cpu", "--first", "A hacker.", "--second", "It ran."]
    if command == "embed":
        return ["embed", "--model", str(m), "--device", "cpu", "--word", "code", "the code ran", "code is law"]
    if command == "attention":
        return ["attention", "--model", str(m), "--device", "cpu", "--out", str(d / "a.html"), "some text"]
    if command == "evaluate":
        return ["evaluate", "--model", str(m), "--data", str(FX.masked), "--device", "cpu", "--max-sequences", "16"]
    if command == "score":
        return ["score", "--model", str(m), "--device", "cpu", "the code ran ."]
    if command == "finetune":
        return ["finetune", "--model", str(m), "--train", str(FX.train), "--output", str(d / "out"), *FT]
    if command == "predict":
        return ["predict", "--model", str(m), "--device", "cpu", "some text"]
    if command == "tokenize":
        return ["tokenize", "--tokenizer", str(m), "some text"]
    raise ValueError(command)


def _model_case(kind: str, command: str, expect: str = "refuse", names: tuple = (), timeout: float = 120) -> None:
    def setup(d: Path) -> Plan:
        m = _model_variant(kind, d)
        out = d / "out" if command == "finetune" else (d / "a.html" if command == "attention" else None)
        return Plan(args=_model_cmd(command, m, d), protect=[m] if m.exists() else [], never=[d / PAYLOAD_MARK],
                    output=out, names=[n.replace("M", str(m)) if n == "M" else n for n in names])

    SCENARIOS.append(Scenario(f"model-{kind}-{command}", command, expect, setup, timeout))


_model_case("no-config", "fill-mask", names=("config.json",))
_model_case("no-config", "finetune", names=("config.json",))
_model_case("non-bert", "predict-nsp", names=("bert",))
_model_case("non-bert", "finetune", names=("bert",))
_model_case("config-garbage", "embed", names=("config.json",))
_model_case("config-list", "fill-mask", names=("config.json",))
_model_case("config-bad-values", "fill-mask")
for _cmd in ("fill-mask", "predict-nsp", "embed", "attention", "evaluate", "score", "finetune"):
    _model_case("pickled", _cmd, names=("pickled",))
_model_case("truncated-safetensors", "fill-mask", names=("M",))
_model_case("no-tokenizer", "fill-mask", names=("tokenizer",))
_model_case("tokenizer-garbage", "tokenize", names=("tokenizer",))
_model_case("no-mask-token", "fill-mask", names=("mask",))
_model_case("a-file", "fill-mask", names=("M",))
_model_case("tokenizer-dir", "predict-nsp", names=("config.json",))
_model_case("run-without-final", "fill-mask", names=("final",))
_model_case("missing", "embed", names=("M",))
_model_case("missing", "tokenize", names=("M",))
_model_case("classifier", "score", names=("masked-LM",))


# One argv string may hold at most 128 KiB (Linux MAX_ARG_STRLEN): long texts on the command line are ~110k
# characters; the 200k-character case goes through --input files.
_L = "the hacker wrote code " * 5000  # ~110k characters
_L200K = "the hacker wrote code " * 9100  # ~200k characters


def _quick(limit: float) -> Callable:
    def check(rc, out, err, secs) -> Optional[str]:
        return f"took {secs:.0f} s (> {limit:.0f} s)" if secs > limit else None

    return check


def _infer(name: str, command: str, expect: str, args: Callable[[Path], list[str]], names: tuple = (),
           timeout: float = 120, quick: float | None = None) -> None:
    def setup(d: Path) -> Plan:
        return Plan(args=args(d), names=list(names), check=_quick(quick) if quick else None)

    SCENARIOS.append(Scenario(f"{command}-{name}", command, expect, setup, timeout))


M = ["--device", "cpu"]
_infer("no-mask-token-in-text", "fill-mask", "refuse",
       lambda d: ["fill-mask", "--model", str(FX.model), *M, "no mask here"], ("[MASK]",))
_infer("1000-masks", "fill-mask", "either",
       lambda d: ["fill-mask", "--model", str(FX.model), *M, " ".join(["[MASK]"] * 1000)])
_infer("mask-beyond-truncation", "fill-mask", "either",
       lambda d: ["fill-mask", "--model", str(FX.model), *M, _L + " [MASK]"], quick=60)
_infer("empty-text", "fill-mask", "refuse", lambda d: ["fill-mask", "--model", str(FX.model), *M, ""])
_infer("empty-first", "predict-nsp", "refuse",
       lambda d: ["predict-nsp", "--model", str(FX.model), *M, "--first", "", "--second", "It ran."], ("empty",))
_infer("only-first", "predict-nsp", "refuse",
       lambda d: ["predict-nsp", "--model", str(FX.model), *M, "--first", "A."], ("--second",))
_infer("2x110k-chars", "predict-nsp", "accept",
       lambda d: ["predict-nsp", "--model", str(FX.model), *M, "--first", _L, "--second", _L, "--json"],
       timeout=90, quick=60)
_infer("device-cuda", "predict-nsp", "refuse",
       lambda d: ["predict-nsp", "--model", str(FX.model), "--device", "cuda", "--first", "A.", "--second", "B."],
       ("cuda",))


def _nsp_file(name: str, content: str, suffix: str, expect: str = "refuse", names: tuple = (),
              quick: float | None = None) -> None:
    def setup(d: Path) -> Plan:
        f = write(d / f"pairs{suffix}", content)
        return Plan(args=["predict-nsp", "--model", str(FX.model), *M, "--input", str(f)], protect=[f],
                    names=[n.replace("F", str(f)) if n == "F" else n for n in names],
                    check=_quick(quick) if quick else None)

    SCENARIOS.append(Scenario(f"predict-nsp-input-{name}", "predict-nsp", expect, setup, 120))


_nsp_file("empty", "", ".tsv", names=("F",))
_nsp_file("2x200k-chars-tsv", _L200K + "\t" + _L200K + "\n", ".tsv", expect="accept", quick=60)
_nsp_file("one-column-tsv", "just one column\n", ".tsv", names=("F",))



@sc("predict-nsp-input-and-first", "predict-nsp", "refuse")
def _(d: Path) -> Plan:
    f = write(d / "p.tsv", "A.\tB.\n")
    return Plan(args=["predict-nsp", "--model", str(FX.model), *M, "--input", str(f), "--first", "A."])


_infer("word-not-in-sentences", "embed", "refuse",
       lambda d: ["embed", "--model", str(FX.model), *M, "--word", "zebra", "the code ran", "a hacker"], ("zebra",))
_infer("layer-99", "embed", "refuse",
       lambda d: ["embed", "--model", str(FX.model), *M, "--word", "code", "--layer", "99", "code ran", "the code"],
       ("layer",))
_infer("110k-text", "tokenize", "accept", lambda d: ["tokenize", "--tokenizer", str(FX.tok), "word " * 22_000],
       quick=60)
_infer("empty-text", "tokenize", "either", lambda d: ["tokenize", "--tokenizer", str(FX.tok), ""])
_infer("pairs-artifact-as-tokenizer", "tokenize", "either", lambda d: ["tokenize", "--tokenizer", str(FX.pairs), "hi"])


# ================================================================ 6. finetune / predict / score


def _ft(name: str, files: Callable[[], dict], expect: str = "refuse", names: tuple = (), extra: tuple = (),
        timeout: float = 150) -> None:
    """files: {"train"|"dev": (file name, content)}, made at setup time (the contents read the fixture corpus)."""

    def setup(d: Path) -> Plan:
        paths = {k: write(d / v[0], v[1]) for k, v in files().items()}
        args = ["finetune", "--model", str(FX.model), "--train", str(paths["train"]), "--output", str(d / "out"), *FT,
                *extra]
        if "dev" in paths:
            args += ["--dev", str(paths["dev"])]
        return Plan(args=args, protect=list(paths.values()), output=d / "out", names=list(names))

    SCENARIOS.append(Scenario(f"finetune-{name}", "finetune", expect, setup, timeout))


def _rows(n: int, labels=("pos", "neg")) -> str:
    lines = [ln for ln in FX.corpus.read_text().splitlines() if ln.strip()][:n]
    return "".join(json.dumps({"text": t, "label": labels[i % len(labels)]}) + "\n" for i, t in enumerate(lines))


_ft("empty-train", lambda: {"train": ("t.jsonl", "")}, names=("no examples",))
_ft("empty-csv", lambda: {"train": ("t.csv", "text,label\n")}, names=("no examples",))
_ft("missing-label", lambda: {"train": ("t.jsonl", '{"text": "a b"}\n')}, names=("label",))
_ft("missing-text", lambda: {"train": ("t.jsonl", '{"body": "a b", "label": "x"}\n')}, names=("text",))
_ft("text-not-string", lambda: {"train": ("t.jsonl", '{"text": 5, "label": "x"}\n')}, names=("text",))
_ft("label-float", lambda: {"train": ("t.jsonl", '{"text": "a", "label": 1.5}\n')}, names=("label",))
_ft("label-null", lambda: {"train": ("t.jsonl", '{"text": "a", "label": null}\n')}, names=("label",))
_ft("ragged-csv", lambda: {"train": ("t.csv", "text,label\nhello,pos\na, b, c,neg\n")}, names=(":3",))
_ft("ragged-tsv", lambda: {"train": ("t.tsv", "text\tlabel\nhello\tpos\nx\ty\tz\n")}, names=(":3",))
_ft("unknown-suffix", lambda: {"train": ("t.txt", "text,label\nhello,pos\n")}, names=(".txt",))
_ft("non-utf8", lambda: {"train": ("t.csv", b"text,label\nh\xffllo,pos\n")}, names=("UTF-8",))
_ft("short-csv-row", lambda: {"train": ("t.csv", "text,label\nhello,pos\nno label here\n")}, names=(":3", "column"))
_ft("tabs-named-csv", lambda: {"train": ("t.csv", "text\tlabel\nhello\tpos\n")}, names=(":1", "CSV"))
_ft("utf16-without-bom", lambda: {"train": ("t.csv", ("text,label\n" + "hello there,pos\n" * 8).encode("utf-16-le"))},
    names=("UTF-16",))
_ft("dev-label-unseen", lambda: {"train": ("t.jsonl", _rows(40)), "dev": ("d.jsonl", _rows(6, ("pos", "maybe")))},
    names=("maybe",))
_ft("single-class", lambda: {"train": ("t.jsonl", _rows(30, ("pos",)))}, expect="either")
_ft("device-cuda", lambda: {"train": ("t.jsonl", _rows(20))}, names=("cuda",), extra=("--set", "device=cuda"))
_ft("text-pair-field-missing", lambda: {"train": ("t.jsonl", _rows(20))}, names=("hypothesis",),
    extra=("--set", "text_pair_field=hypothesis"))
_ft("label-field-is-text-field", lambda: {"train": ("t.jsonl", _rows(20))}, names=("label_field",),
    extra=("--set", "label_field=text", "--set", "text_field=text"))


def _pred(name: str, content: str | None, suffix: str = ".jsonl", expect: str = "refuse", names: tuple = (),
          model: str = "clf", texts: tuple = ()) -> None:
    def setup(d: Path) -> Plan:
        m = FX.clf if model == "clf" else FX.model
        args = ["predict", "--model", str(m), *M]
        prot = []
        if content is not None:
            f = write(d / f"in{suffix}", content)
            args += ["--input", str(f)]
            prot.append(f)
        return Plan(args=args + list(texts), protect=prot, names=list(names))

    SCENARIOS.append(Scenario(f"predict-{name}", "predict", expect, setup, 120))


_pred("empty-input", "", names=("no examples",))
_pred("missing-text-field", '{"body": "x"}\n', names=("text",))
_pred("no-texts-no-input", None)
_pred("pretrain-model-not-classifier", None, model="pretrain", texts=("some text",))



def _score(name: str, content: str | None, kind: str = "pairs", expect: str = "refuse", names: tuple = (),
           extra: tuple = (), texts: tuple = ()) -> None:
    def setup(d: Path) -> Plan:
        args = ["score", "--model", str(FX.model), *M, *extra]
        prot = []
        if content is not None:
            f = write(d / ("p.jsonl" if kind == "pairs" else "s.txt"), content)
            args += ["--pairs" if kind == "pairs" else "--input", str(f)]
            prot.append(f)
        return Plan(args=args + list(texts), protect=prot, names=list(names))

    SCENARIOS.append(Scenario(f"score-{name}", "score", expect, setup, 120))


_score("blimp-missing-sentence-bad", '{"sentence_good": "The cat sat.", "UID": "x"}\n', names=("sentence_bad",))
_score("blimp-empty", "", names=("p.jsonl",))
_score("blimp-not-object", '["The cat sat.", "Cat the sat."]\n', names=("p.jsonl:1",))
_score("input-empty", "", kind="input", names=("s.txt",))
_score("variant-bogus", None, texts=("the code ran .",), extra=("--variant", "bogus"), names=("variant",))



# ================================================================ 7. pipelines


def _pipe(name: str, text: Callable[[Path], str], expect: str = "refuse", names: tuple = (), extra: tuple = (),
          protect: Callable[[Path], list[Path]] | None = None) -> None:
    def setup(d: Path) -> Plan:
        y = write(d / "pipe.yaml", text(d))
        return Plan(args=["run", str(y), *extra], protect=[y] + (protect(d) if protect else []),
                    names=[n.replace("Y", str(y)) if n == "Y" else n for n in names])

    SCENARIOS.append(Scenario(f"run-{name}", "run", expect, setup, 120))


def _base_pipe(d: Path, workdir: Path | None = None, stages: str = "[train-vocab]", more: str = "") -> str:
    return (f"workdir: {workdir or d / 'work'}\ninput: [{FX.corpus}]\nstages: {stages}\n"
            f"train_vocab: {{vocab_size: 300, num_workers: 1}}\n{more}")


_pipe("workdir-is-file", lambda d: _base_pipe(d, workdir=write(d / "wfile", "x")),
      protect=lambda d: [d / "wfile"], names=("wfile",))
_pipe("unknown-stage", lambda d: _base_pipe(d, stages="[train-vocab, tokenise]"), names=("tokenise",))
_pipe("stage-section-typo", lambda d: _base_pipe(d) + "pairz: {max_seq_length: 64}\n", names=("pairz",))
_pipe("stage-key-typo", lambda d: _base_pipe(d, stages="[train-vocab, pairs]") + "pairs: {max_seq_lenght: 64}\n",
      names=("max_seq_lenght",))
_pipe("unused-stage-section-typo", lambda d: _base_pipe(d) + "pairs: {max_seq_lenght: 64}\n", names=("max_seq_lenght",))
_pipe("stage-section-not-mapping", lambda d: _base_pipe(d) + "pairs: 64\n", names=("pairs",))
_pipe("stages-out-of-order", lambda d: _base_pipe(d, stages="[pairs, train-vocab]"), names=("stages",))
_pipe("stages-empty", lambda d: _base_pipe(d, stages="[]"), names=("stages",))
_pipe("stages-duplicate", lambda d: _base_pipe(d, stages="[train-vocab, train-vocab]"), names=("stages",))
_pipe("pretrain-preset-unknown", lambda d: _base_pipe(d, stages="[train-vocab, pairs, mask, pretrain]") +
      "pretrain: {model: {preset: giant}}\n", names=("preset",))
_pipe("is-a-list", lambda d: "- workdir: x\n", names=("Y",))
_pipe("empty-yaml", lambda d: "", names=("input",))
_pipe("alias-bomb", lambda d: "\n".join(ALIAS_BOMB) + "\n", names=("Y",))
_pipe("input-missing-file", lambda d: _base_pipe(d).replace(str(FX.corpus), str(d / "nope.txt")),
      names=("nope.txt",))
_pipe("workdir-holds-input", lambda d: (corpus_copy(d / "data", "a.txt"),
                                         _base_pipe(d, workdir=d / "data").replace(str(FX.corpus), str(d / "data")))[1],
      protect=lambda d: [d / "data"])
_pipe("workdir-foreign-tokenizer-overwrite", lambda d: (foreign_dir(d / "work" / "tokenizer"), _base_pipe(d))[1],
      extra=("--overwrite",), protect=lambda d: [d / "work" / "tokenizer"], names=("tokenizer",))
_pipe("dry-run-ok", lambda d: _base_pipe(d), expect="accept", extra=("--dry-run",))
_pipe("set-unknown", lambda d: _base_pipe(d), extra=("--set", "train_vocab.vocab_sise=64"), names=("--set",))
_pipe("seed-negative", lambda d: _base_pipe(d) + "seed: -3\n", names=("seed",))


@sc("run-file-missing", "run", "refuse")
def _(d: Path) -> Plan:
    return Plan(args=["run", str(d / "nope.yaml")], names=["nope.yaml"])


@sc("run-file-is-directory", "run", "refuse")
def _(d: Path) -> Plan:
    return Plan(args=["run", str(d)], names=[str(d)])


# ================================================================ fixtures


def build_fixtures(root: Path, reuse: bool = False) -> None:
    fx = root / "fx"
    FX.root = fx
    FX.corpus = fx / "corpus.txt"
    FX.tok, FX.tok2 = fx / "tok", fx / "tok2"
    FX.pairs, FX.pairs2, FX.masked = fx / "pairs", fx / "pairs2", fx / "masked"
    FX.run = fx / "run"
    FX.model = FX.run / "final"
    FX.clf = fx / "clf"
    FX.train = fx / "train.jsonl"
    if reuse and (FX.clf / "manifest.json").is_file():
        return
    if fx.exists():
        shutil.rmtree(fx)
    fx.mkdir(parents=True)
    lines = (REPO / "data" / "sample" / "jargon.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:300]
    write(FX.corpus, "".join(lines))
    must(["train-vocab", "--input", str(FX.corpus), "--output", str(FX.tok), "--set", "vocab_size=1000"], fx)
    must(["train-vocab", "--input", str(FX.corpus), "--output", str(FX.tok2), "--set", "vocab_size=1500"], fx)
    must(["pairs", "--input", str(FX.corpus), "--tokenizer", str(FX.tok), "--output", str(FX.pairs),
          "--set", "max_seq_length=64"], fx)
    must(["pairs", "--input", str(FX.corpus), "--tokenizer", str(FX.tok2), "--output", str(FX.pairs2),
          "--set", "max_seq_length=64"], fx)
    must(["mask", "--input", str(FX.pairs), "--output", str(FX.masked)], fx)
    must(run_args(FX.masked, FX.run), fx)
    FX.train = write(fx / "train.jsonl", _rows(40))
    must(["finetune", "--model", str(FX.run), "--train", str(FX.train), "--output", str(FX.clf), *FT], fx)


# ================================================================ running and classifying


def run_scenario(idx: int, s: Scenario, root: Path) -> dict:
    try:
        return _run_scenario(idx, s, root)
    except Exception as exc:  # noqa: BLE001 - a fault of the sweep itself is reported, never fatal
        return {"name": s.name, "command": s.command, "expect": s.expect, "outcome": "setup_failed",
                "problems": [f"sweep error: {type(exc).__name__}: {str(exc)[:300]}"]}


def _run_scenario(idx: int, s: Scenario, root: Path) -> dict:
    d = root / "s" / f"{idx:03d}-{re.sub(r'[^A-Za-z0-9_.+-]', '_', s.name)}"
    d.mkdir(parents=True)
    rec: dict = {"name": s.name, "command": s.command, "expect": s.expect}
    try:
        plan = s.setup(d)
    except Exception as exc:  # noqa: BLE001 - a scenario that cannot be set up is reported, not fatal
        rec.update(outcome="setup_failed", problems=[f"setup failed: {type(exc).__name__}: {exc}"])
        return rec
    if plan.skip:
        rec.update(outcome="skipped", reason=plan.skip)
        return rec
    before = {str(p): snapshot(p) for p in plan.protect}
    output_existed = plan.output is not None and (plan.output.exists() or plan.output.is_symlink())
    never_before = {str(p) for p in plan.never if p.exists()}
    fx_before = quick_fingerprint(FX.root)
    rc, out, err, secs = run_bert(plan.args, d, s.timeout, plan.env, plan.stdin)
    combined = out + "\n" + err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    glued = [ln for ln in err.splitlines() if not ln.startswith("error:") and re.search(r"[\]|]error: ", ln)]
    hint_lines = [ln for ln in err.splitlines() if ln.startswith("hint:")]
    usage_error = rc == 2 and not error_lines and "Usage:" in err
    traceback = "Traceback (most recent call last)" in combined
    lost = []
    for p in plan.protect:
        lost += diff_snapshot(before[str(p)], snapshot(p), str(p))
    fx_after = quick_fingerprint(FX.root)
    if fx_after != fx_before:
        changed = sorted(k for k in set(fx_before) | set(fx_after) if fx_before.get(k) != fx_after.get(k))
        lost += [f"fixture {FX.root / k} changed" for k in changed[:5]]
    ran = [str(p) for p in plan.never if p.exists() and str(p) not in never_before]
    litter = find_litter([d, FX.root] + plan.watch)
    left_output = (s.expect == "refuse" and rc != 0 and plan.output is not None and not output_existed
                   and (plan.output.exists() or plan.output.is_symlink()))
    rec.update(exit_code=rc, seconds=round(secs, 1), finished=rc is not None, error_lines=len(error_lines),
               hint_lines=len(hint_lines), traceback=traceback, usage_error=usage_error)
    problems, soft = [], []
    if rc is None:
        problems.append(f"timeout after {s.timeout:.0f} s")
    elif rc == 1:
        problems.append("exit 1 (unexpected failure)")
    elif rc not in (0, 2):
        problems.append(f"exit {rc} (crash or signal)")
    if traceback:
        problems.append("traceback leaked")
    if lost:
        problems.append("user data changed: " + "; ".join(lost[:5]))
    if ran:
        problems.append("pickle payload ran: " + ", ".join(ran))
    if litter:
        problems.append("litter left: " + ", ".join(litter[:5]))
    if left_output:
        problems.append(f"refused but created its output {plan.output}")
    if s.expect == "refuse" and rc == 0:
        problems.append("bad input accepted (exit 0)")
    if s.expect == "accept" and rc == 2:
        problems.append("valid input refused (exit 2)")
    if glued:
        problems.append("the error: line does not start a line (glued to a progress bar): " + glued[0][-160:])
    elif rc == 2 and not usage_error and len(error_lines) != 1:
        problems.append(f"{len(error_lines)} 'error:' lines, expected exactly one")
    if plan.check is not None and rc is not None:
        extra = plan.check(rc, out, err, secs)
        if extra:
            problems.append(extra)
    if rc == 2 and len(error_lines) == 1:
        if not hint_lines:
            soft.append("no hint: line")
        missing = [n for n in plan.names if n.lower() not in error_lines[0].lower()]
        if missing:
            soft.append(f"error line does not name {missing}")
    if usage_error:
        soft.append("refused by the CLI framework's usage box (no 'error:' line)")
    if problems:
        outcome = "broken"
    elif rc == 2:
        outcome = "clean_refusal"
    else:
        outcome = "accepted"
    said = [ln for ln in err.splitlines() if re.match(r"(error|hint|warning): ", ln)]
    rec.update(outcome=outcome, problems=problems, soft=soft, stderr_head=tail_lines("\n".join(said) or err, 4))
    if problems:
        rec["first_lines"] = tail_lines(err or out, 6)
    log = root / "logs" / f"{d.name}.txt"
    log.write_text(f"$ bert {' '.join(a if len(a) < 300 else a[:300] + '…' for a in plan.args)}\n"
                   f"exit {rc} in {secs:.1f} s\n--- stdout\n{out[-20000:]}\n--- stderr\n{err[-20000:]}\n",
                   encoding="utf-8")
    return rec


def tree_state() -> dict:
    """Which bertcli was swept: the commit and how many paths differ from it (the results hold for that tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.splitlines()
        return {"commit": head, "changed_paths": len(status),
                "unmerged_paths": sum(1 for ln in status if ln[:2] in ("UU", "AA", "DU", "UD"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/sweep", type=Path)
    ap.add_argument("--jobs", type=int, default=2, help="scenarios run at once (the machine's cores are shared)")
    ap.add_argument("--only", default=None, help="run only the scenarios whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--reuse-fixtures", action="store_true", help="keep WORKDIR/fx from a previous run (development)")
    args = ap.parse_args()
    if args.list:
        for s in SCENARIOS:
            print(f"{s.command:12s} {s.expect:7s} {s.name}")
        print(f"{len(SCENARIOS)} scenarios")
        return
    root: Path = args.workdir.resolve()
    for old in [root / "s", root / "logs"] + ([] if args.reuse_fixtures else [root]):
        if old.exists():
            for p in old.rglob("*"):  # read-only dirs of a previous run must be writable to be removed
                if p.is_dir() and not p.is_symlink():
                    os.chmod(p, 0o755)
            shutil.rmtree(old)
    (root / "logs").mkdir(parents=True)
    (root / "s").mkdir()
    t0 = time.monotonic()
    tree_before = tree_state()
    build_fixtures(root, reuse=args.reuse_fixtures)
    fx_snapshot = snapshot(FX.root)
    t_fix = time.monotonic() - t0
    chosen = [(i, s) for i, s in enumerate(SCENARIOS) if args.only is None or args.only in s.name]
    results: list[dict] = [None] * len(chosen)  # type: ignore[list-item]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_scenario, i, s, root): k for k, (i, s) in enumerate(chosen)}
        for fut in concurrent.futures.as_completed(futures):
            rec = fut.result()
            results[futures[fut]] = rec
            print(json.dumps(rec, ensure_ascii=False), flush=True)
    fixtures_changed = diff_snapshot(fx_snapshot, snapshot(FX.root), str(FX.root))
    ran = [r for r in results if r["outcome"] not in ("skipped", "setup_failed")]
    broken = [r for r in results if r["outcome"] == "broken" or r["outcome"] == "setup_failed"]

    def count(word: str) -> int:
        return sum(1 for r in ran if any(word in p for p in r.get("problems", [])))

    summary = {
        "summary": True,
        "scenarios": len(results),
        "ran": len(ran),
        "skipped": [{"name": r["name"], "reason": r["reason"]} for r in results if r["outcome"] == "skipped"],
        "clean_refusals": sum(1 for r in ran if r["outcome"] == "clean_refusal"),
        "accepted_as_expected": sum(1 for r in ran if r["outcome"] == "accepted"),
        "broken": len(broken),
        "exit_1": count("exit 1"),
        "crashes_or_timeouts": count("timeout") + count("crash or signal"),
        "tracebacks_leaked": count("traceback leaked"),
        "user_data_lost": count("user data changed"),
        "payloads_ran": count("pickle payload ran"),
        "litter_left": count("litter left"),
        "bad_input_accepted": count("bad input accepted"),
        "valid_input_refused": count("valid input refused"),
        "not_one_error_line": count("'error:' lines"),
        "error_glued_to_progress_bar": count("glued to a progress bar"),
        "refusal_left_output": count("created its output"),
        "too_slow": count("took "),
        "fixtures_changed": fixtures_changed[:10],
        "bertcli_tree": {"before": tree_before, "after": tree_state()},
        "seconds_fixtures": round(t_fix, 1),
        "seconds_total": round(time.monotonic() - t0, 1),
        "broken_promises": [
            {"name": r["name"], "command": r["command"], "expect": r["expect"], "exit_code": r.get("exit_code"),
             "why": r.get("problems"), "first_lines": r.get("first_lines", [])} for r in broken],
        "soft_issues": [{"name": r["name"], "command": r["command"], "soft": r["soft"],
                         "error": next(iter(r.get("stderr_head", [])), "")}
                        for r in ran if r.get("soft")],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(summary, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()

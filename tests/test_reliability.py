"""What bertcli promises about bad input (docs/reliability.md): exit 2, one line naming the file/key/path, and
nothing of the user's deleted or left behind. Each test names the item of the hostile-input sweep it covers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcli.artifacts import OLD_MARK, TMP_MARK, atomic_output_dir, remove_stale_temps
from bertcli.cli import app

runner = CliRunner()


def _refused(args: list[str], *needles: str) -> str:
    """Run a command that must be refused: exit 2, one error line naming what is wrong, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _vocab(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train-vocab", "--input", str(corpus), "--output", str(out), "--set", "vocab_size=300", *extra]


# ---------------------------------------------------------------- 1. --overwrite deletes only what bertcli wrote


def test_overwrite_refuses_a_project_folder_with_a_config_yaml(tmp_path, tiny_corpus):
    project = tmp_path / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("lr: 1\n")
    (project / "thesis.tex").write_text("precious")
    (project / "src" / "main.py").write_text("print(1)\n")
    before = _tree(project)
    line = _refused(_vocab(tiny_corpus, project, "--overwrite"), str(project), "not a bertcli artifact")
    assert "--overwrite" not in line
    assert _tree(project) == before


def test_overwrite_refuses_a_browser_extension_with_a_manifest_json(tmp_path, tiny_corpus, tiny_tokenizer):
    ext = tmp_path / "webext"
    ext.mkdir()
    (ext / "manifest.json").write_text(json.dumps({"manifest_version": 3, "name": "my extension"}))
    (ext / "background.js").write_text("chrome.runtime;")
    before = _tree(ext)
    _refused(_vocab(tiny_corpus, ext, "--overwrite"), "not a bertcli artifact")
    _refused(["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output", str(ext),
              "--overwrite"], "not a bertcli artifact")
    assert _tree(ext) == before


def test_overwrite_refuses_an_artifact_holding_files_it_did_not_write(tmp_path, tiny_corpus):
    out = tmp_path / "tok"
    assert runner.invoke(app, _vocab(tiny_corpus, out)).exit_code == 0
    (out / "notes.txt").write_text("my notes")
    _refused(_vocab(tiny_corpus, out, "--overwrite"), "notes.txt")
    assert (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    assert runner.invoke(app, _vocab(tiny_corpus, out, "--overwrite")).exit_code == 0


def test_output_equal_to_or_inside_an_input_is_refused(tmp_path, tiny_corpus, tiny_tokenizer):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_bytes(tiny_corpus.read_bytes())
    before = _tree(corpus_dir)
    _refused(_vocab(corpus_dir, corpus_dir / "tok", "--overwrite"), "inside")
    _refused(_vocab(corpus_dir / "a.txt", corpus_dir, "--overwrite"), "input")
    tok_before = _tree(tiny_tokenizer)
    _refused(["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output",
              str(tiny_tokenizer), "--overwrite"], "input")
    assert _tree(corpus_dir) == before and _tree(tiny_tokenizer) == tok_before
    pairs = tmp_path / "pairs"
    assert runner.invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                               "--output", str(pairs), "--set", "max_seq_length=64"]).exit_code == 0
    pairs_before = _tree(pairs)
    _refused(["mask", "--input", str(pairs), "--output", str(pairs), "--overwrite"], "input")
    assert _tree(pairs) == pairs_before


# ---------------------------------------------------------------- 4. YAML that never finishes, or hides a key


def test_yaml_alias_bomb_and_duplicate_keys_are_refused(tmp_path, tiny_corpus):
    bomb = tmp_path / "bomb.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb.write_text("\n".join(lines) + "\n")
    _refused(_vocab(tiny_corpus, tmp_path / "o", "--config", str(bomb)), f"{bomb}:2", "aliases")
    dup = tmp_path / "dup.yaml"
    dup.write_text("vocab_size: 300\nlowercase: true\nvocab_size: 400\n")
    _refused(_vocab(tiny_corpus, tmp_path / "o", "--config", str(dup)), f"{dup}:3", "'vocab_size' is given twice")
    assert not (tmp_path / "o").exists()


def test_long_values_are_cut_in_messages_and_overrides_are_blamed_on_set(tmp_path, tiny_corpus):
    line = _refused(_vocab(tiny_corpus, tmp_path / "o", "--set", "lowercase=" + "x" * 100_000), "lowercase")
    assert len(line) < 400
    cfg = tmp_path / "c.yaml"
    cfg.write_text("vocab_size: 300\n")
    line = _refused(_vocab(tiny_corpus, tmp_path / "o", "--config", str(cfg), "--set", "vocab_size.x=1"),
                    "vocab_size", "--set")
    assert str(cfg) not in line


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_config_that_is_not_a_file_is_named_for_what_it_is(tmp_path, tiny_corpus, kind):
    if kind == "directory":
        path, word = tmp_path, "directory"
    elif kind == "fifo":
        path, word = tmp_path / "pipe", "not a regular file"
        os.mkfifo(path)
    else:
        path, word = Path("/dev/zero"), "not a regular file"
    _refused(_vocab(tiny_corpus, tmp_path / "o", "--config", str(path)), str(path), word)


# ---------------------------------------------------------------- 15. litter and interrupted renames


def test_stale_temps_are_removed_and_an_interrupted_overwrite_is_restored(tmp_path, tiny_corpus, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: what it left is stale
    parent = tmp_path / "runs"
    parent.mkdir()
    litter = parent / f".pairs{TMP_MARK}{dead_pid}"
    litter.mkdir()
    (litter / "shard-00000.input_ids.npy").write_bytes(b"\0" * 1000)
    moved_aside = parent / f".tok{OLD_MARK}{dead_pid}"  # killed between the two renames of an --overwrite
    moved_aside.mkdir()
    (moved_aside / "vocab.txt").write_text("[PAD]\n")
    live = parent / f".other{TMP_MARK}{os.getpid()}"  # a run writing right now
    live.mkdir()
    elsewhere = parent / f".shared{TMP_MARK}some-other-node-{dead_pid}"  # another node's, on a shared disk
    elsewhere.mkdir()
    remove_stale_temps(parent)
    err = capsys.readouterr().err
    assert not litter.exists() and (parent / "tok" / "vocab.txt").read_text() == "[PAD]\n"
    assert live.is_dir() and elsewhere.is_dir()
    assert "restored" in err and "removed" in err
    # any stage writing into that parent cleans up too
    litter.mkdir()
    assert runner.invoke(app, _vocab(tiny_corpus, parent / "tok2")).exit_code == 0
    assert not litter.exists()


def test_the_losing_writer_of_two_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception, match="already holds"):
        with atomic_output_dir(out) as tmp:
            (tmp / "data.bin").write_bytes(b"x")
            # another run finished the same output while this one worked
            out.mkdir()
            (out / "manifest.json").write_text(json.dumps({"format_version": 1, "stage": "pairs",
                                                           "bertcli_version": "0", "files": ["manifest.json"]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_through_a_symlink_replaces_the_target_and_leaves_no_link_litter(tmp_path, tiny_corpus):
    real = tmp_path / "real-tok"
    assert runner.invoke(app, _vocab(tiny_corpus, real)).exit_code == 0
    link = tmp_path / "tok"
    link.symlink_to(real)
    assert runner.invoke(app, _vocab(tiny_corpus, link, "--overwrite")).exit_code == 0
    assert link.is_symlink() and (real / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------- 8, 9. artifacts are verified when opened


@pytest.fixture()
def pairs_copy(tmp_path, tiny_corpus, tiny_tokenizer) -> Path:
    out = tmp_path / "pairs"
    result = runner.invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                                 "--output", str(out), "--set", "max_seq_length=64", "--set", "num_workers=1"])
    assert result.exit_code == 0, result.output
    return out


def _mask_refused(pairs: Path, *needles: str) -> None:
    out = pairs.parent / "masked"
    _refused(["mask", "--input", str(pairs), "--output", str(out), "--set", "num_workers=1"], *needles)
    assert not out.exists() and not [p for p in pairs.parent.iterdir() if p.name.startswith(".masked")]


def test_a_shard_rewritten_in_place_is_refused(pairs_copy):
    import numpy as np

    shard = pairs_copy / "shard-00000.input_ids.npy"
    ids = np.load(shard)
    ids[5] = ids[6]  # same size, other content
    np.save(shard, ids)
    _mask_refused(pairs_copy, str(shard), "sha256")


def test_ids_beyond_the_vocabulary_and_lengths_beyond_max_seq_length_are_refused(pairs_copy, monkeypatch):
    import numpy as np

    monkeypatch.setenv("BERTCLI_VERIFY_MAX_BYTES", "0")  # sizes only: the array checks must catch it themselves
    shard = pairs_copy / "shard-00000.input_ids.npy"
    ids = np.load(shard)
    ids[3] = 60000
    np.save(shard, ids)
    _mask_refused(pairs_copy, "60000", "vocab_size")
    ids[3] = 5
    np.save(shard, ids)
    manifest = json.loads((pairs_copy / "manifest.json").read_text())
    manifest["max_seq_length"] = 8
    (pairs_copy / "manifest.json").write_text(json.dumps(manifest))
    _mask_refused(pairs_copy, "max_seq_length 8")


@pytest.mark.parametrize("damage", ["truncated", "deleted", "list", "no_dtype"])
def test_damaged_artifacts_are_named_not_crashed_on(pairs_copy, damage):
    shard = pairs_copy / "shard-00000.input_ids.npy"
    manifest_path = pairs_copy / "manifest.json"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
        _mask_refused(pairs_copy, str(shard))
    elif damage == "deleted":
        shard.unlink()
        _mask_refused(pairs_copy, str(shard), "missing")
    elif damage == "list":
        manifest_path.write_text("[1, 2]")
        _mask_refused(pairs_copy, str(manifest_path), "not a JSON object")
    else:
        manifest = json.loads(manifest_path.read_text())
        del manifest["token_dtype"]
        manifest_path.write_text(json.dumps(manifest))
        _mask_refused(pairs_copy, "token_dtype")


@pytest.mark.parametrize("key, value", [("vocab_size", "x"), ("vocab_size", [1]), ("inputs", 5), ("nsp", "yes"),
                                        ("special_token_ids", [1]), ("format_version", 99)])
def test_a_manifest_value_of_the_wrong_type_is_named(pairs_copy, key, value):
    # These ended in a ValueError, TypeError or AttributeError (exit 1) inside the tokenizer check, or were used.
    manifest_path = pairs_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[key] = value
    manifest_path.write_text(json.dumps(manifest))
    _mask_refused(pairs_copy, str(manifest_path), key if key != "format_version" else "format_version 99")


# ---------------------------------------------------------------- 10. degenerate data


def test_a_corpus_with_a_fifth_of_its_tokens_unknown_is_warned_about(tmp_path, tiny_tokenizer):
    # 19% [UNK] (a vocabulary of too small an alphabet) passed without a word: the warning began at 50%, the
    # share of one unreadable text, where a vocabulary fit for its corpus leaves well under 1%.
    corpus = tmp_path / "some-unknown.txt"
    doc = "\n".join(["the hacker wrote ꙮ code .", "a program ꙮ ran ."] * 4)
    corpus.write_text(f"{doc}\n\n{doc}\n", encoding="utf-8")
    pairs = tmp_path / "pairs"
    result = runner.invoke(app, ["pairs", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer), "--output",
                                 str(pairs), "--set", "max_seq_length=32", "--set", "num_workers=1"])
    assert result.exit_code == 0, result.output
    share = json.loads((pairs / "manifest.json").read_text())["stats"]["unk_share"]
    assert 0.05 < share < 0.5
    assert f"warning: {share:.0%} of the corpus's tokens are [UNK]" in result.output
    assert "train a vocabulary on such text" in result.output and "decomposed" not in result.output


def test_a_corpus_the_tokenizer_cannot_read_is_warned_about_then_refused(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "emoji.txt"
    docs = ["\n".join("🙂🙃 \u0301\u0302 😀" * (k + 1) for k in range(3)) for _ in range(4)]
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    pairs = tmp_path / "pairs"
    result = runner.invoke(app, ["pairs", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer), "--output",
                                 str(pairs), "--set", "max_seq_length=32", "--set", "num_workers=1"])
    assert result.exit_code == 0, result.output
    assert "[UNK]" in result.output and "warning" in result.output
    assert json.loads((pairs / "manifest.json").read_text())["stats"]["unk_share"] > 0.5
    _mask_refused(pairs, "no token can be a prediction target")


# ---------------------------------------------------------------- 6. one long junk line does not poison the vocabulary


def test_words_longer_than_max_input_chars_are_not_learned(tmp_path, tiny_corpus):
    clean, junk = tmp_path / "clean", tmp_path / "junk"
    corpus = tmp_path / "corpus.txt"
    blob = (bytes(range(256)) * 400).hex()  # one 200 KB "word" (no punctuation: the pre-tokenizer keeps it whole)
    corpus.write_text(tiny_corpus.read_text(encoding="utf-8") + "\n" + blob + "\n", encoding="utf-8")
    assert runner.invoke(app, _vocab(tiny_corpus, clean)).exit_code == 0
    assert runner.invoke(app, _vocab(corpus, junk)).exit_code == 0
    vocab = (junk / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert max(map(len, vocab)) <= 100
    assert vocab == (clean / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert json.loads((junk / "manifest.json").read_text())["stats"]["long_words_skipped"] >= 1


# ---------------------------------------------------------------- 5, 13. inference commands


def test_long_pair_inputs_are_cut_in_linear_time(tiny_bert, tmp_path):
    long_text = "the hacker wrote code " * 9000  # ~200k characters each: the tokenizer's pair truncation is quadratic
    result = runner.invoke(app, ["predict-nsp", "--model", str(tiny_bert), "--first", long_text, "--second",
                                 long_text, "--json"])
    assert result.exit_code == 0, result.output
    assert "only the first" in result.stderr and "truncated" in result.stderr
    assert 0.0 <= json.loads(result.stdout)["is_next_probability"] <= 1.0


def test_pickled_weights_are_refused_in_one_line(tiny_bert, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_bert, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    torch.save(weights, model_dir / "pytorch_model.bin")
    (model_dir / "model.safetensors").unlink()
    for command in (["fill-mask", "The [MASK] sat."], ["predict-nsp", "--first", "A.", "--second", "B."],
                    ["embed", "--word", "a", "a b"], ["score", "a b"], ["predict", "a b"],
                    ["finetune", "--train", str(tmp_path / "t.tsv"), "--output", str(tmp_path / "clf")]):
        line = _refused([command[0], "--model", str(model_dir), *command[1:]], "pickled", str(model_dir))
        assert "weights_only" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("device", ["meta", "mps", "xla:0"])
def test_a_device_bertcli_does_not_run_on_is_named(tiny_bert, device):
    _refused(["fill-mask", "--model", str(tiny_bert), "--device", device, "The [MASK] sat."], f"--device '{device}'")


# ---------------------------------------------------------------- 11. the environment


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(tmp_path, tiny_corpus, monkeypatch):
    import errno as errno_codes

    from bertcli import artifacts

    def full(path, data):
        raise OSError(errno_codes.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(artifacts, "write_json_atomic", full)
    out = tmp_path / "tok"
    _refused(_vocab(tiny_corpus, out), "No space left", "manifest.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_paths_in_the_way_are_named(tmp_path, tiny_corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _refused(_vocab(tiny_corpus, blocker / "tok"), str(blocker))
    _refused(_vocab(tiny_corpus, blocker), "is a file")
    workdir_file = tmp_path / "work"
    workdir_file.write_text("x")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {workdir_file}\ninput: [{tiny_corpus}]\nstages: [train-vocab]\n")
    _refused(["run", str(pipeline)], str(workdir_file))


# ---------------------------------------------------------------- 14, 16. messages that say what is wrong


def test_corpus_inputs_that_are_not_utf8_text_files(tmp_path):
    utf16 = tmp_path / "u16.txt"
    utf16.write_text("Hello world.\nSecond line here.\n" * 20, encoding="utf-16")
    _refused(_vocab(utf16, tmp_path / "o"), str(utf16), "UTF-16")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    _refused(_vocab(pipe, tmp_path / "o"), str(pipe), "not a regular file")
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    _refused(_vocab(deep, tmp_path / "o"), f"{deep}:1")
    digits = tmp_path / "digits.jsonl"
    digits.write_text('{"text": "a", "n": ' + "9" * 5000 + "}\n")
    _refused(_vocab(digits, tmp_path / "o"), f"{digits}:1")


@pytest.mark.parametrize("setting, key", [
    ("seed=-1", "seed"), ("seed=1180591620717411303424", "seed"), ("vocab_size=1000000000", "vocab_size"),
    ("language=english!", "language"),
])
def test_out_of_range_values_are_refused_before_any_work(tmp_path, tiny_corpus, setting, key):
    _refused(_vocab(tiny_corpus, tmp_path / "o", "--set", setting), key)
    assert not (tmp_path / "o").exists()


def test_pretrain_config_errors_name_the_key(tmp_path, masked_data):
    _refused(["pretrain", "--data", str(masked_data), "--output", str(tmp_path / "r"), "--set",
              "model.hidden_act=foo"], "model.hidden_act")


def test_empty_pair_sentences_are_refused_as_in_files(tiny_bert):
    _refused(["predict-nsp", "--model", str(tiny_bert), "--first", " ", "--second", "It ran."], "empty")


@pytest.mark.parametrize("args, needle", [
    (["predict", "-m", "x", "--batch-size", "0", "a"], "Invalid value for '--batch-size'"),
    (["predict", "-m", "x", "--set", "a=b", "a"], ("No such option", "--set")),  # Click words it two ways
    (["finetune", "--train", "x", "--seeds", "0"], "'--seeds'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_options_click_rejects_are_one_line_too(args, needle):
    # Through the console entry point (CliRunner calls the app, not main): Click's own refusals were a usage line,
    # a "Try --help" line and a boxed message.
    result = subprocess.run([sys.executable, "-m", "bertcli", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert error.startswith("error: ") and all(part in error for part in (needle if isinstance(needle, tuple)
                                                                          else (needle,)))
    assert hint.startswith("hint: see ") and hint.endswith(" --help")


def test_an_abort_outside_a_command_exits_130(monkeypatch):
    # Ctrl-C while Click parses, or a prompt aborted: typer.Abort. main() once caught it under a name that typer
    # 0.27.2 removed from its Click copy, and ended in an AttributeError traceback instead.
    import typer

    from bertcli import cli

    def aborted(**_: object) -> None:
        raise typer.Abort()

    monkeypatch.setattr(cli, "app", aborted)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130


def test_the_bare_command_prints_its_help():
    result = subprocess.run([sys.executable, "-m", "bertcli"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train-vocab" in result.stdout and result.stderr == ""


# ---------------------------------------------------------------- 12. signals


def test_an_interrupted_pretraining_names_the_checkpoint_to_resume_from(tmp_path, masked_data, monkeypatch):
    from bertcli.stages import pretrain

    run = tmp_path / "run"

    def interrupted(cfg, resume=False, overwrite=False):
        (run / "step-00000004").mkdir(parents=True)
        (run / "step-00000004" / "checkpoint.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "run", interrupted)
    result = runner.invoke(app, ["pretrain", "--data", str(masked_data), "--output", str(run)])
    assert result.exit_code == 130
    assert "step-00000004" in result.output and "--resume" in result.output and "Traceback" not in result.output


def test_under_torchrun_rank_0_speaks_for_the_run(tmp_path, masked_data, monkeypatch):
    # Every rank printed every error and its own "interrupted:" note: a rank that could not see the run directory
    # said "no finished output", rank 0 "can continue from step-…". And an interruption after the run had
    # finished offered --resume.
    from bertcli import dist
    from bertcli.errors import ArtifactError
    from bertcli.stages import pretrain

    run = tmp_path / "run"
    args = ["pretrain", "--data", str(masked_data), "--output", str(run)]
    decided_by_rank_0 = dist.DistContext(rank=1, world_size=2, local_rank=1, device=None, backend="gloo")

    def refuse(cfg, resume=False, overwrite=False):
        dist.main_decides(decided_by_rank_0, lambda: None)  # rank 1 decides nothing: it raises what rank 0 sent
        raise AssertionError("not reached")

    def relay(ctx, obj):
        return None, (ArtifactError, "the run's data changed", "use the same data")

    monkeypatch.setattr(dist, "broadcast_object", relay)
    monkeypatch.setattr(pretrain, "run", refuse)
    monkeypatch.setenv("RANK", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.output == ""  # rank 0 prints it, once

    def own_error(cfg, resume=False, overwrite=False):
        raise ArtifactError("data 'x' does not exist on this node", hint="mount it")

    monkeypatch.setattr(pretrain, "run", own_error)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: rank 1: data 'x' does not exist on this node", "hint: mount it"]

    def interrupted(cfg, resume=False, overwrite=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "run", interrupted)
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and result.output == ""  # rank 0 says where the run can continue
    monkeypatch.setenv("RANK", "0")
    (run / "final").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (run / "step-00000004").mkdir()
    (run / "step-00000004" / "checkpoint.json").write_text("{}")
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert result.stderr == f"interrupted: the run in '{run}' had finished: its model is {run / 'final'}\n"


def test_ctrl_c_during_a_parallel_stage_is_one_line(tmp_path, tiny_tokenizer):
    import signal
    import time

    corpus = tmp_path / "big.txt"
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "jargon.txt"
    corpus.write_bytes(sample.read_bytes() * 40)  # 45 MB
    # ten pairings of it: ~19 s of work on two idle cores (with the default two, ~5 s: it could end before the
    # interrupt), interrupted after five
    cmd = [sys.executable, "-m", "bertcli", "pairs", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer),
           "--output", str(tmp_path / "pairs"), "--set", "num_workers=2", "--set", "dupe_factor=10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(5)  # the workers have started
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: to every process of the group, workers included
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "pairs").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pretraining_refuses_data_without_targets_and_metrics_stay_json(tmp_path, tiny_tokenizer):
    from bertcli.metrics import MetricsWriter, read_metrics

    corpus = tmp_path / "emoji.txt"
    corpus.write_text("\n\n".join("🙂🙃 😀\n😀 🙂" for _ in range(40)) + "\n", encoding="utf-8")
    pairs = tmp_path / "pairs"
    assert runner.invoke(app, ["pairs", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer), "--output",
                               str(pairs), "--set", "max_seq_length=16", "--set", "num_workers=1"]).exit_code == 0
    _refused(["pretrain", "--data", str(pairs), "--output", str(tmp_path / "run"), "--set", "model.preset=tiny",
              "--set", "batch_size=4", "--set", "micro_batch_size=4", "--set", "device=cpu"],
             "no token of its training sequences can be a prediction target")
    writer = MetricsWriter(tmp_path, True, None)
    writer.write({"step": 1, "mlm_loss": float("nan"), "grad_norm": float("inf")})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert json.loads(line) == {"step": 1, "mlm_loss": None, "grad_norm": None}
    assert read_metrics(tmp_path)[0]["mlm_loss"] is None


def test_a_damaged_metrics_file_is_named_by_bert_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": "x", "loss": 1.0}\n{"step": 3}\n')
    _refused(["plot", str(tmp_path)], "metrics.jsonl:2", "step")


def test_sweep_findings_stay_fixed(tmp_path, masked_data, pairs_copy, tiny_bert, monkeypatch):
    # found by scripts/sweep_hostile.py: each was an exit 1, a silent acceptance or a lost file
    digits = tmp_path / "digits.yaml"
    digits.write_text("vocab_size: " + "9" * 5000 + "\n")
    _refused(["train-vocab", "--input", "x", "--output", str(tmp_path / "o"), "--config", str(digits)], str(digits))
    _refused(["pretrain", "--data", str(masked_data), "--output", str(masked_data), "--overwrite"], "data")
    _refused(["pretrain", "--data", str(masked_data), "--output", str(masked_data / "run")], "inside")
    report = tmp_path / "report.pdf"
    report.write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    _refused(["plot", str(tmp_path / "run"), "--output", str(report)], "already exists")
    assert report.read_text() == "mine"
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    _refused(["predict-nsp", "--model", str(tiny_bert), "--input", str(empty)], "no pairs")
    monkeypatch.setenv("BERTCLI_VERIFY_MAX_BYTES", "lots")
    _refused(["mask", "--input", str(pairs_copy), "--output", str(tmp_path / "m")], "BERTCLI_VERIFY_MAX_BYTES")


def test_plot_refusals(tmp_path):
    # a hand sweep of 2026-12-04: 100k nested brackets were a RecursionError (exit 1); -o x.jpg wrote PNG bytes
    # under a .jpg name and -o newdir/ a PNG named newdir; metrics without a pretraining figure gave an empty chart
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"step": 1, "mlm_loss": 2.0}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"step": 2}\n')
    _refused(["plot", str(run)], "metrics.jsonl:2", "too deeply nested")
    metrics.write_text('{"step": 1, "mlm_loss": 2.0}\n')
    for name in ("x.jpg", "x.svg", "newdir/"):
        _refused(["plot", str(run), "--output", str(tmp_path / name)], "name the file .png")
    metrics.write_text('{"step": 1, "seed": 42, "dev_accuracy": 0.5}\n')  # a fine-tuned model's metrics
    _refused(["plot", str(run)], "no pretraining metrics to plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and sorted(p.name for p in run.iterdir()) == [
        "metrics.jsonl"]


def test_second_sweep_findings_stay_fixed(tmp_path, masked_data, tiny_bert, tiny_corpus):
    # the sweep's open findings of 2026-12-03 (docs/reliability.md)
    # bert inspect: a deleted shard file is named (was exit 1), someone else's manifest.json is refused (was "None
    # artifact")
    damaged = tmp_path / "masked"
    damaged.mkdir()
    for p in masked_data.rglob("*"):
        if p.is_file():
            (damaged / p.relative_to(masked_data)).parent.mkdir(parents=True, exist_ok=True)
            (damaged / p.relative_to(masked_data)).write_bytes(p.read_bytes())
    shard = sorted(damaged.glob("shard-*.npy"))[0]
    shard.unlink()
    _refused(["inspect", str(damaged)], shard.name, "missing")
    foreign = tmp_path / "extension"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "my extension", "version": "1.0"}')
    _refused(["inspect", str(foreign)], "manifest.json", "not written by bertcli")

    # bert plot --output in a folder that does not exist: refused, and no temporary left anywhere
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    _refused(["plot", str(run), "--output", str(tmp_path / "nowhere" / "plot.png")], "nowhere", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list(run.glob(".*"))

    # bert finetune from a checkpoint whose weights do not fit its config: refused, not trained from random weights
    odd = tmp_path / "odd-model"
    odd.mkdir()
    for p in tiny_bert.iterdir():
        if p.is_file():
            (odd / p.name).write_bytes(p.read_bytes())
    from safetensors.torch import load_file, save_file

    weights = load_file(str(odd / "model.safetensors"))
    renamed = {k.replace("bert.", "encoder_of_mine.", 1): v for k, v in weights.items()}
    save_file(renamed, str(odd / "model.safetensors"), metadata={"format": "pt"})
    train = Path(__file__).parent / "data" / "topic-train.tsv"
    out = tmp_path / "ft"
    _refused(["finetune", "--model", str(odd), "--train", str(train), "--output", str(out)], "encoder weights",
             "random")
    assert not out.exists() and not list(tmp_path.glob(".ft*"))

    # bert run: a misspelt key in the section of a stage it does not run is reported all the same
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'work'}\ninput: [{tiny_corpus}]\nstages: [train-vocab]\n"
                        "pretrain:\n  learning_rat: 0.001\n")
    _refused(["run", str(pipeline)], "learning_rat")
    assert not (tmp_path / "work").exists()

"""`bert run`: the pipeline YAML drives every stage, skips up-to-date ones, and its model answers every command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertcli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _pipeline_yaml(tmp_path: Path, corpus: Path, **changes) -> Path:
    """A pipeline small enough for seconds: 600-token vocab, 32-token sequences, a 2-layer 32-wide model."""
    cfg = {
        "workdir": str(tmp_path / "work"),
        "input": [str(corpus)],
        "seed": 7,
        "train_vocab": {"vocab_size": 600, "num_workers": 1},
        "pairs": {"max_seq_length": 32, "num_workers": 1},
        "mask": {"num_workers": 1, "max_predictions_per_seq": 5},
        "pretrain": {
            "model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "intermediate_size": 64, "max_position_embeddings": 32},
            "max_steps": 4, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 1, "eval_every": 0,
            "eval_batches": 1, "save_every": 0, "log_every": 1, "device": "cpu",
        },
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _lines(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("[")]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_corpus: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("pipeline")
    path = _pipeline_yaml(tmp, tiny_corpus)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert [line.split()[1] for line in lines if line.endswith(" s")] == ["train-vocab", "pairs", "mask", "pretrain"]
    return path, tmp / "work"


def _copied_run(pipeline_run, tmp_path: Path, name: str = "moved.yaml") -> tuple[dict, Path, Path]:
    """(pipeline config, its YAML, workdir): a copy of the finished work directory, so the other tests keep theirs,
    and the pipeline pointed at it. Change cfg, then _save(cfg, yaml)."""
    path, work = pipeline_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    cfg = yaml.safe_load(path.read_text())
    cfg["workdir"] = str(copy)
    moved = tmp_path / name
    _save(cfg, moved)
    return cfg, moved, copy


def _save(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")


def test_pipeline_makes_every_artifact_in_order(pipeline_run) -> None:
    path, work = pipeline_run
    manifests = {d: json.loads((work / d / "manifest.json").read_text()) for d in ("tokenizer", "pairs", "masked")}
    assert manifests["pairs"]["stage"] == "pairs"
    # Each stage read the one before it.
    assert manifests["masked"]["inputs"]["pairs"]["content_hash"] == manifests["pairs"]["content_hash"]
    run_manifest = json.loads((work / "pretrain" / "manifest.json").read_text())
    assert run_manifest["inputs"]["data"]["content_hash"] == manifests["masked"]["content_hash"]
    assert (work / "pretrain" / "final" / "config.json").is_file()
    # The pipeline's seed reached every stage.
    for d in ("pairs", "masked"):
        assert yaml.safe_load((work / d / "config.yaml").read_text())["seed"] == 7


def test_second_run_skips_every_stage(pipeline_run) -> None:
    path, work = pipeline_run
    before = {p: p.stat().st_mtime_ns for p in work.rglob("manifest.json")}
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert len(lines) == 4 and all("skipped, up to date" in line for line in lines), lines
    # It ends by suggesting a fill-mask prompt made from a sentence of the corpus itself (in its language).
    model_line = result.stdout.splitlines()[-1]
    command = f'bert fill-mask --model {work / "pretrain" / "final"} "'
    assert command in model_line and model_line.endswith('"'), model_line
    prompt = model_line.split(command)[1][:-1]
    head, tail = prompt.split("[MASK]")
    corpus = yaml.safe_load(path.read_text())["input"][0]
    assert any(line.startswith(head) and line.endswith(tail) for line in Path(corpus).read_text().splitlines())
    assert {p: p.stat().st_mtime_ns for p in work.rglob("manifest.json")} == before


def test_changed_stage_config_needs_overwrite_and_reruns_only_from_there(pipeline_run, tmp_path: Path) -> None:
    cfg, changed, copy = _copied_run(pipeline_run, tmp_path, "changed.yaml")
    cfg["mask"]["max_predictions_per_seq"] = 4
    _save(cfg, changed)

    dry = runner.invoke(app, ["run", str(changed), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    actions = [line.split(": would ")[1].split()[0] for line in _lines(dry)]
    assert actions == ["skip", "skip", "rerun", "rerun"]
    # The dry run names the key that changed and says what the real run will need.
    assert _lines(dry)[2].endswith("(it was made with another config (mask.max_predictions_per_seq: 5 → 4); "
                                   "needs --overwrite)"), _lines(dry)[2]
    assert _lines(dry)[3].endswith("(a stage before it is rebuilt; needs --overwrite)")
    assert "needs --overwrite" not in runner.invoke(app, ["run", str(changed), "--dry-run", "--overwrite"]).stdout

    refused = runner.invoke(app, ["run", str(changed)])
    assert refused.exit_code == 2
    assert "stage mask" in refused.stderr and "mask.max_predictions_per_seq: 5 → 4" in refused.stderr
    assert "--overwrite" in refused.stderr

    result = runner.invoke(app, ["run", str(changed), "--overwrite"])
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert "skipped" in lines[0] and "skipped" in lines[1]
    assert any(line.startswith("[3/4] mask") and line.endswith(" s") for line in lines)
    assert any(line.startswith("[4/4] pretrain") and line.endswith(" s") for line in lines)
    masked = json.loads((copy / "masked" / "manifest.json").read_text())
    run_manifest = json.loads((copy / "pretrain" / "manifest.json").read_text())
    assert run_manifest["inputs"]["data"]["content_hash"] == masked["content_hash"]


def test_positions_below_the_pairs_length_are_refused_before_any_stage_runs(tmp_path: Path, tiny_corpus: Path) -> None:
    path = _pipeline_yaml(tmp_path, tiny_corpus, pairs__max_seq_length=64)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert ("key 'pretrain.model.max_position_embeddings': 32 is below pairs.max_seq_length 64; "
            "set it to at least 64") in result.stderr
    assert not (tmp_path / "work").exists()  # refused before train-vocab spent any time
    # A model taken from init_from has its own positions: pretrain checks those when it loads it.
    cfg = yaml.safe_load(path.read_text())
    cfg["pretrain"]["init_from"] = str(tmp_path / "some-bert")
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert "max_position_embeddings" not in runner.invoke(app, ["run", str(path), "--dry-run"]).output


def test_a_run_directory_inside_the_data_is_refused_before_any_stage(tmp_path: Path, tiny_corpus: Path) -> None:
    # pretrain.output inside workdir/masked: the dry run said "would run", and the real run built every data stage
    # before pretrain refused (with a hint about an --output that bert run does not have).
    path = _pipeline_yaml(tmp_path, tiny_corpus, pretrain__output=str(tmp_path / "work" / "masked" / "run"))
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert _lines(dry)[3].endswith(f"would stop, it is the data '{tmp_path / 'work' / 'masked'}', lies inside it or "
                                   "holds it; set pretrain.output outside the data, or leave it to workdir; bertcli "
                                   "never writes into its inputs"), _lines(dry)[3]
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "stage pretrain" in result.stderr and "running" not in result.output
    assert not (tmp_path / "work").exists()


def test_a_dry_run_does_not_import_torch(tmp_path: Path, tiny_corpus: Path) -> None:
    # Planning the pretraining run's directory imported torch (1.5 s against 0.2 s for every dry run).
    import subprocess
    import sys

    path = _pipeline_yaml(tmp_path, tiny_corpus)
    code = ("import sys; from typer.testing import CliRunner; from bertcli.cli import app; "
            f"r = CliRunner().invoke(app, ['run', {str(path)!r}, '--dry-run']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]


def test_under_torchrun_bert_run_builds_no_data_stage(tmp_path: Path, tiny_corpus: Path, monkeypatch) -> None:
    # Every process ran train-vocab into the same directory: rank 1 failed on rank 0's artifact, exit 1.
    path = _pipeline_yaml(tmp_path, tiny_corpus)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: bert run under torchrun (2 processes): stage train-vocab would run in every process",
        f"hint: build the data first with one process: bert run {path} --set 'stages=[train-vocab, pairs, mask]'; "
        "then the same torchrun command pretrains"]
    assert not (tmp_path / "work").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    built = runner.invoke(app, ["run", str(path), "--set", "stages=[train-vocab, pairs, mask]"])  # the hint's
    assert built.exit_code == 0, built.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert [line.split(": would ")[1].split()[0] for line in _lines(dry)] == ["skip", "skip", "skip", "run"]
    # stale only through the user's --set: the hint repeats it (without it, following the hint built nothing)
    result = runner.invoke(app, ["run", str(path), "--set", "pairs.dupe_factor=2", "--overwrite"])
    assert result.exit_code == 2
    assert (f"hint: build the data first with one process: bert run {path} --set pairs.dupe_factor=2 --set "
            "'stages=[train-vocab, pairs, mask]' --overwrite;") in result.stderr


def test_unfinished_pretrain_run_is_resumed(pipeline_run, tmp_path: Path) -> None:
    cfg, moved, copy = _copied_run(pipeline_run, tmp_path)
    (copy / "pretrain" / "manifest.json").unlink()  # as if the run had been killed before it finished
    dry = runner.invoke(app, ["run", str(moved), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would resume (an unfinished run with the same config)" in _lines(dry)[3]
    # Its data rebuilt by hand since it began (same configs, another corpus): the plan said "resume", and the
    # stage then refused the other data. The checkpoint's record is the run's only note of what it trained on.
    states = [p for p in (copy / "pretrain").glob("*/training_state/state.json")]
    assert states
    saved = {p: p.read_bytes() for p in states}
    for state in states:
        payload = json.loads(state.read_text())
        payload["run"]["data_content_hash"] = "0" * 64
        state.write_text(json.dumps(payload))
    dry = runner.invoke(app, ["run", str(moved), "--dry-run"])
    assert "would rerun (an unfinished run, but its training data changed since it began; needs --overwrite)" \
        in _lines(dry)[3], dry.output
    for state, content in saved.items():
        state.write_bytes(content)
    # When a stage before it is rebuilt, the run's data changes under it: it cannot be resumed, and the refusal
    # comes before the earlier stages overwrite the data it was started on (it came after, leaving it unresumable).
    cfg["pairs"]["seed"] = 8
    _save(cfg, moved)
    dry = runner.invoke(app, ["run", str(moved), "--dry-run"])
    assert "pretrain" in _lines(dry)[3]
    assert "would rerun (an unfinished run, but a stage before it is rebuilt" in _lines(dry)[3]
    pairs_before = (copy / "pairs" / "manifest.json").read_bytes()
    refused = runner.invoke(app, ["run", str(moved)])
    assert refused.exit_code == 2 and "stage pairs" in refused.stderr and "running" not in refused.stdout
    assert (copy / "pairs" / "manifest.json").read_bytes() == pairs_before


def test_a_finished_run_continues_through_keys_resume_accepts(pipeline_run, tmp_path: Path) -> None:
    # bert run rebuilt a finished run from step 0 (with --overwrite) when only log_every or max_steps changed
    cfg, moved, copy = _copied_run(pipeline_run, tmp_path)
    cfg["pretrain"]["log_every"] = 2
    _save(cfg, moved)
    dry = runner.invoke(app, ["run", str(moved), "--dry-run"])
    assert "would skip (up to date: a finished run, with keys --resume accepts changed (pretrain.log_every: 1 → 2)" \
        in _lines(dry)[3]
    weights = (copy / "pretrain" / "final" / "model.safetensors").read_bytes()
    result = runner.invoke(app, ["run", str(moved)])  # no --overwrite needed: nothing is thrown away
    assert result.exit_code == 0, result.output
    assert "skipped" in _lines(result)[3]  # and so on every later run: it settles
    assert (copy / "pretrain" / "final" / "model.safetensors").read_bytes() == weights
    cfg["pretrain"]["max_steps"] = 6
    _save(cfg, moved)
    assert "would resume (a finished run, with keys --resume accepts changed" in _lines(
        runner.invoke(app, ["run", str(moved), "--dry-run"]))[3]
    result = runner.invoke(app, ["run", str(moved)])
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "pretrain" / "manifest.json").read_text())["stats"]["steps"] == 6


def test_config_show_run_leaves_workdir_as_given(pipeline_run, tmp_path: Path) -> None:
    path, _ = pipeline_run
    cfg = yaml.safe_load(path.read_text())
    del cfg["workdir"]
    bare = tmp_path / "mine.yaml"
    bare.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    shown = runner.invoke(app, ["config", "show", "run", "--config", str(bare)])
    assert shown.exit_code == 0 and yaml.safe_load(shown.stdout)["workdir"] is None  # saved back, still the default


def test_an_artifact_bertcli_cannot_replace_is_named_with_its_own_fix(pipeline_run, tmp_path: Path) -> None:
    cfg, moved, copy = _copied_run(pipeline_run, tmp_path)
    manifest = json.loads((copy / "pairs" / "manifest.json").read_text())
    del manifest["files"]  # written before manifests listed their files: bertcli's, but not safe to clear
    (copy / "pairs" / "manifest.json").write_text(json.dumps(manifest))
    cfg["pairs"]["seed"] = 8
    _save(cfg, moved)
    refused = runner.invoke(app, ["run", str(moved), "--overwrite"])
    assert refused.exit_code == 2 and "whose manifest does not list its files" in refused.stderr
    assert f"hint: remove the old artifact '{copy / 'pairs'}' yourself, or change workdir" in refused.stderr


def test_changed_corpus_is_noticed(tmp_path: Path, tiny_corpus: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    shutil.copy(tiny_corpus, corpus)
    path = _pipeline_yaml(tmp_path, corpus, stages=["train-vocab"])
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    assert "skipped" in _lines(runner.invoke(app, ["run", str(path)]))[0]
    with corpus.open("a", encoding="utf-8") as f:
        f.write("\nA brand new document about kludges.\n")
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert "would rerun (the corpus changed; needs --overwrite)" in _lines(dry)[0]


def test_every_command_works_on_the_pipelines_model(pipeline_run, tmp_path: Path) -> None:
    _, work = pipeline_run
    run_dir = work / "pretrain"  # a run directory: its final/ is used
    cases = [
        ["predict-nsp", "--model", str(run_dir), "--first", "The hacker wrote code.", "--second", "It ran.", "--json"],
        ["fill-mask", "--model", str(run_dir), "--json", "The hacker wrote [MASK] code."],
        ["evaluate", "--model", str(run_dir), "--data", str(work / "masked"), "--json"],
        ["embed", "--model", str(run_dir), "--word", "hacker", "--json", "A hacker.", "The hacker ethic."],
        ["attention", "--model", str(run_dir), "--out", str(tmp_path / "a.html"), "The hacker ethic."],
    ]
    outputs = []
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
        outputs.append(result.stdout)
    nsp = json.loads(outputs[0])
    assert nsp["label"] in ("IsNext", "NotNext")
    assert len(json.loads(outputs[1])["masks"][0]["predictions"]) == 5
    metrics = json.loads(outputs[2])
    assert metrics["masked_tokens"] > 0 and metrics["perplexity"] > 1 and 0 <= metrics["nsp_accuracy"] <= 1
    assert json.loads(outputs[3])["pieces"][0]
    assert (tmp_path / "a.html").is_file()

    # The pairs artifact too: masked on the fly, the same numbers for any batch size.
    on_pairs = [
        json.loads(runner.invoke(app, ["evaluate", "--model", str(run_dir), "--data", str(work / "pairs"), "--json",
                                       "--batch-size", b]).stdout)
        for b in ("3", "16")
    ]
    assert on_pairs[0]["masking"].startswith("dynamic") and on_pairs[0]["masked_tokens"] > 0
    assert on_pairs[0]["masked_tokens"] == on_pairs[1]["masked_tokens"]
    assert on_pairs[0]["mlm_loss"] == pytest.approx(on_pairs[1]["mlm_loss"], rel=1e-5)


def test_bad_pipeline_configs(tmp_path: Path, tiny_corpus: Path) -> None:
    path = _pipeline_yaml(tmp_path, tiny_corpus, pairs={"max_seq_lenght": 64})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "pairs.max_seq_lenght" in result.stderr and "pairs.max_seq_length" in result.stderr

    path = _pipeline_yaml(tmp_path, tiny_corpus, stages=["pairs", "train-vocab"])
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "out of order" in result.stderr

    path = _pipeline_yaml(tmp_path, tiny_corpus, mask={"masked_lm_prob": 1.5}, pretrain={"batch_size": 0})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "mask.masked_lm_prob" in result.stderr and "pretrain.batch_size" in result.stderr  # all at once

    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.stderr

    # A misspelt key given by --set is blamed on the --set, not on the file (the sweep's run-set-unknown).
    path = _pipeline_yaml(tmp_path, tiny_corpus)
    result = runner.invoke(app, ["run", str(path), "--set", "pairs.dupe_factr=3"])
    assert result.exit_code == 2
    assert "'pairs.dupe_factr' (from --set pairs.dupe_factr=3)" in result.stderr
    assert "fix that --set" in result.stderr and f"fix {path}" not in result.stderr


def test_a_stage_refusal_names_the_stage_and_leaves_no_empty_workdir(tmp_path: Path, tiny_corpus: Path,
                                                                     monkeypatch) -> None:
    # A refusal found only once the stage reads its data (a vocabulary smaller than the alphabet) named a bare
    # key ("key 'vocab_size'"), and the workdir the stage had created stayed behind, empty.
    path = _pipeline_yaml(tmp_path, tiny_corpus, stages=["train-vocab"], train_vocab={"vocab_size": 10},
                          workdir=str(tmp_path / "work" / "a" / "b"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "error: stage train-vocab: key 'train_vocab.vocab_size'" in result.stderr
    assert not (tmp_path / "work").exists()  # nor any folder on the way to it
    # A relative input is read from the current directory, which the hint names (it named an --input option).
    monkeypatch.chdir(tmp_path)
    path = _pipeline_yaml(tmp_path, Path("corpus.txt"), stages=["train-vocab"])
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "input path 'corpus.txt' does not exist" in result.stderr
    assert f"relative paths are read from the directory bert runs in ({tmp_path})" in result.stderr
    # and the dry run says so too (it said "would run" for every stage)
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 2 and dry.stderr == result.stderr and "would run" not in dry.output
    # A workdir that is a file: the key is named before any stage starts (it was "cannot use …: File exists").
    (tmp_path / "work").write_text("mine")
    path = _pipeline_yaml(tmp_path, tiny_corpus, stages=["train-vocab"])
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "key 'workdir'" in result.stderr and "is a file" in result.stderr
    assert (tmp_path / "work").read_text() == "mine" and "running" not in result.stderr


def test_files_of_the_users_in_a_stage_directory_stop_the_run_before_any_stage(tmp_path: Path,
                                                                               tiny_corpus: Path) -> None:
    # Dry run said "would rerun … needs --overwrite", the run "exists but it exists but …, pass --overwrite", and
    # --overwrite "choose another --output" (bert run has none) after the stages before it had run.
    path = _pipeline_yaml(tmp_path, tiny_corpus, stages=["train-vocab", "pairs", "mask", "pretrain"])
    notes = tmp_path / "work" / "pretrain" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0
    assert "pretrain → " in dry.stdout
    assert "would stop, it exists and holds files that are not a bertcli run (notes.txt)" in dry.stdout
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["run", str(path), *extra])
        assert result.exit_code == 2 and "error: stage pretrain: " in result.stderr, result.stderr
        assert f"hint: move your files out of '{notes.parent}', or change workdir" in result.stderr
        assert "running" not in result.stderr and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["pretrain"]
    assert notes.read_text() == "mine"
    # the same for a data stage: a file of the user's in the tokenizer directory
    shutil.rmtree(tmp_path / "work")
    mine = tmp_path / "work" / "tokenizer" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    result = runner.invoke(app, ["run", str(path), "--overwrite"])
    assert result.exit_code == 2 and "is not a bertcli artifact" in result.stderr and "move your files" in result.stderr
    assert mine.read_text() == "mine"
    # an empty folder where a stage writes is no obstacle (the stage itself accepts one), not a "stale" artifact
    shutil.rmtree(tmp_path / "work")
    (tmp_path / "work" / "tokenizer").mkdir(parents=True)
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert "tokenizer: would run (no artifact yet)" in _lines(dry)[0]
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0  # no --overwrite asked for
    assert (tmp_path / "work" / "tokenizer" / "manifest.json").is_file()
    # and a file where a stage's directory goes
    shutil.rmtree(tmp_path / "work")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "pretrain").write_text("mine")
    result = runner.invoke(app, ["run", str(path), "--overwrite"])
    assert result.exit_code == 2 and "is not a directory, where the stage's directory goes" in result.stderr
    assert f"hint: move '{tmp_path / 'work' / 'pretrain'}' away" in result.stderr
    assert (tmp_path / "work" / "pretrain").read_text() == "mine"


def test_shipped_demo_pipeline_is_valid() -> None:
    from bertcli.stages.pipeline import load_pipeline

    cfg, plans = load_pipeline(ROOT / "configs" / "pipeline" / "demo.yaml")
    assert [p.name for p in plans] == ["train-vocab", "pairs", "pretrain"]  # dynamic masking: no mask stage
    tokenizer, pairs, pretrain = (p.cfg for p in plans)
    assert pairs.tokenizer == tokenizer.output and pretrain.data == pairs.output
    assert pretrain.model.max_position_embeddings >= pairs.max_seq_length
    assert pretrain.max_predictions_per_seq >= round(pretrain.masked_lm_prob * pairs.max_seq_length)
    assert pretrain.time_budget_s and pretrain.time_budget_s <= 420  # `make demo` stays under 10 minutes
    assert all(Path(ROOT, p).exists() for p in cfg.input)
    # `make demo` evaluates on held-out entries at the demo's own length, and they are not in its training text
    make_vars = dict(
        line.split(" := ", 1) for line in (ROOT / "Makefile").read_text().splitlines() if " := " in line
    )
    assert int(make_vars["DEMO_LENGTH"]) == pairs.max_seq_length

    def documents(path: Path) -> set[str]:
        return {d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()}

    held_out = documents(ROOT / make_vars["DEMO_HELDOUT"])
    training = set().union(*(documents(ROOT / p) for p in cfg.input))
    assert held_out and training and not held_out & training


def test_stages_left_out_are_read_from_the_workdir(tmp_path: Path) -> None:
    from bertcli.stages.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"workdir": "w", "input": ["c.txt"], "stages": ["mask", "pretrain"]}))
    _, (mask, pretrain) = load_pipeline(path)
    assert (mask.cfg.input, pretrain.cfg.data) == ("w/pairs", "w/masked")
    # No mask stage: pretrain takes the pairs artifact and masks it on the fly.
    path.write_text(yaml.safe_dump({"workdir": "w", "input": ["c.txt"], "stages": ["train-vocab", "pairs", "pretrain"],
                                    "pairs": {"tokenizer": "elsewhere/tok"}}))
    _, (_, pairs, pretrain) = load_pipeline(path)
    assert (pairs.cfg.tokenizer, pretrain.cfg.data) == ("elsewhere/tok", "w/pairs")


def test_a_pipeline_without_workdir_writes_under_runs_named_after_its_file(tmp_path: Path) -> None:
    from bertcli.stages.pipeline import load_pipeline

    # The default was runs/demo: a user's own pipeline would have found the demo's artifacts stale, and with
    # --overwrite replaced them.
    path = tmp_path / "my-corpus.yaml"
    path.write_text(yaml.safe_dump({"input": ["c.txt"], "stages": ["train-vocab", "pairs"]}))
    cfg, (vocab, pairs) = load_pipeline(path)
    assert cfg.workdir == str(Path("runs") / "my-corpus")
    assert (vocab.cfg.output, pairs.cfg.tokenizer) == (str(Path("runs/my-corpus/tokenizer")),) * 2


@pytest.mark.parametrize(("section", "command"),
                         [("pretrain", "pretrain"), ("train_vocab", "train-vocab"), (None, "run")])
def test_an_unknown_key_points_to_the_config_show_of_its_stage(tmp_path: Path, section, command) -> None:
    data = {"input": ["c.txt"]}
    if section:
        data[section] = {"time_budget": 20}
    else:
        data["time_budget"] = 20
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert f"`bert config show {command}`" in result.stderr, result.stderr

"""Strict config loading: unknown keys, wrong types, ranges, YAML errors, shipped YAMLs, `bert config show`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertcli.cli import app
from bertcli.config import (
    config_hash,
    config_to_yaml,
    describe_changes,
    dict_changes,
    field_docs,
    keys_with_role,
    load_config,
)
from bertcli.errors import ConfigError
from bertcli.schemas import CONFIG_SCHEMAS, PretrainConfig, TrainVocabConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    p = _write(tmp_path, "input: [a.txt]\nvocab_sise: 100\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainVocabConfig, p)
    msg = exc.value.message
    assert "vocab_sise" in msg and str(p) in msg and "did you mean 'vocab_size'" in msg


def test_all_problems_reported_at_once(tmp_path):
    p = _write(tmp_path, "input: [a.txt]\nvocab_size: lots\nlowercase: 3\nmin_frequency: -1\nbogus: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainVocabConfig, p)
    msg = exc.value.message
    assert msg.startswith("4 problems")
    expected = ("'vocab_size'", "'lots'", "an integer", "'lowercase'", "true or false", "'min_frequency'", ">= 0",
                "'bogus'")
    for part in expected:
        assert part in msg


def test_yaml_syntax_error_gives_line(tmp_path):
    p = _write(tmp_path, "input: [a.txt]\nvocab_size: 100\nlowercase: [true\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainVocabConfig, p)
    assert f"{p}:" in exc.value.message and "YAML syntax error" in exc.value.message
    line = int(exc.value.message.split(f"{p}:")[1].split(":")[0])
    assert line in (3, 4)


def test_set_overrides_are_type_checked_and_nested():
    cfg = load_config(PretrainConfig, None, ["model.preset=tiny", "learning_rate=1e-4", "model.hidden_size=64"])
    assert cfg.model.preset == "tiny" and cfg.learning_rate == pytest.approx(1e-4) and cfg.model.hidden_size == 64
    with pytest.raises(ConfigError, match="model.hidden_size.*expected an integer"):
        load_config(PretrainConfig, None, ["model.hidden_size=big"])
    with pytest.raises(ConfigError, match="did you mean 'model.preset'"):
        load_config(PretrainConfig, None, ["model.presett=tiny"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as refused:
        load_config(PretrainConfig, None, ["learning_rate"])
    assert refused.value.hint == "give the key a value: --set learning_rate=VALUE"


def test_precedence_file_then_set_then_flags(tmp_path):
    p = _write(tmp_path, "input: [from_file.txt]\nvocab_size: 100\noutput: file_out\n")
    cfg = load_config(TrainVocabConfig, p, ["vocab_size=200", "output=set_out"], {"output": "flag_out"})
    assert cfg.input == ["from_file.txt"] and cfg.vocab_size == 200 and cfg.output == "flag_out"


def test_a_bad_value_is_blamed_where_it_was_given(tmp_path):
    p = _write(tmp_path, "input: [a.txt]\nvocab_size: 0\n")
    with pytest.raises(ConfigError, match="'vocab_size' in ") as in_file:
        load_config(TrainVocabConfig, p)
    assert in_file.value.hint == f"fix that value in {p}"
    p = _write(tmp_path, "input: [a.txt]\nvocab_size: 100\n")
    with pytest.raises(ConfigError, match=r"'vocab_size' \(from --set vocab_size=0\)") as by_set:
        load_config(TrainVocabConfig, p, ["vocab_size=0"])
    assert by_set.value.hint == "fix that --set"
    with pytest.raises(ConfigError, match=r"'vocab_size' \(from --vocab-size\)") as by_flag:
        load_config(TrainVocabConfig, p, [], {"vocab_size": 0})
    assert by_flag.value.hint == "fix that option"


def test_strip_accents_accepts_booleans():
    cfg = load_config(TrainVocabConfig, None, ["input=a", "strip_accents=false"])
    assert cfg.strip_accents == "none"
    cfg = load_config(TrainVocabConfig, None, ["input=a", "strip_accents=true"])
    assert cfg.strip_accents == "all"
    with pytest.raises(ConfigError, match="one of 'none', 'latin', 'all'"):
        load_config(TrainVocabConfig, None, ["input=a", "strip_accents=greek"])


def test_zero_and_negative_numbers_rejected():
    with pytest.raises(ConfigError) as exc:
        load_config(TrainVocabConfig, None, ["input=a", "vocab_size=0", "num_workers=-2"])
    assert "'vocab_size'" in exc.value.message and "'num_workers'" in exc.value.message


def test_every_field_has_a_docstring():
    seen = set()

    def walk(schema):
        if schema in seen:
            return
        seen.add(schema)
        docs = field_docs(schema)
        for f in dataclasses.fields(schema):
            assert docs.get(f.name), f"{schema.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                walk(getattr(__import__("bertcli.schemas", fromlist=[f.type]), f.type))

    for schema in CONFIG_SCHEMAS.values():
        walk(schema)


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and prefix + k not in ("train_vocab", "pairs", "mask", "pretrain"):
            out |= _keys(v, f"{prefix}{k}.")
    return out


SHIPPED = sorted((ROOT / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_yaml_loads_and_lists_every_field(path):
    stage = {"pipeline": "run"}.get(path.parent.name, path.parent.name)
    schema = CONFIG_SCHEMAS[stage]
    cfg = load_config(schema, path, validate=False)
    listed = _keys(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    expected = _keys(dataclasses.asdict(cfg))
    if stage != "run":  # a pipeline file holds only the overrides it needs
        assert expected <= listed, f"{path} does not list {sorted(expected - listed)}"


def test_config_show_round_trips():
    result = runner.invoke(app, ["config", "show", "pretrain", "--set", "model.preset=tiny"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["model"]["preset"] == "tiny" and "learning_rate" in data
    result = runner.invoke(app, ["config", "show", "nosuchstage"])
    assert result.exit_code == 2 and "unknown stage" in result.output


@pytest.mark.parametrize(
    "stage, sets, message",
    [
        ("pairs", ["input=c.txt", "nsp=false", "dupe_factor=2"], "key 'dupe_factor': 2 with nsp: false"),
        ("train-vocab", ["input=c.txt", "vocab_size=5"], "key 'vocab_size': 5 leaves no room"),
        ("pairs", ["input=c.txt", "shard_index=3", "num_shards=2"], "key 'shard_index'"),
    ],
)
def test_config_only_checks_are_validate_s_and_config_show_reports_them(stage, sets, message):
    schema = CONFIG_SCHEMAS[stage]
    with pytest.raises(ConfigError, match=message):
        load_config(schema, None, sets)
    result = runner.invoke(app, ["config", "show", stage, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) and f"warning: {message}" in result.stderr


def test_config_hash_ignores_execution_only_keys():
    a = TrainVocabConfig(input=["a"], output="x", num_workers=1)
    b = TrainVocabConfig(input=["b"], output="y", num_workers=2, executor="ray", ray_address="auto", max_retries=0)
    assert keys_with_role(TrainVocabConfig, "execution") == (
        "input", "output", "num_workers", "executor", "ray_address", "max_retries"
    )
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(TrainVocabConfig(input=["a"], vocab_size=5))
    run = PretrainConfig(max_steps=10)
    assert config_hash(run, ignore_role="resumable") == config_hash(PretrainConfig(max_steps=20), "resumable")
    assert config_hash(run, ignore_role="resumable") != config_hash(PretrainConfig(seed=1), "resumable")
    assert "vocab_size: 30522" in config_to_yaml(a)


def test_dict_changes_and_how_they_are_described():
    old = {"model": {"preset": None, "hidden_size": 32, "layers": 2}, "lr": 0.001, "data": "a", "tags": [1]}
    new = {"model": {"preset": "tiny", "hidden_size": None, "layers": None}, "lr": 0.002, "data": "b", "tags": [1, 2]}
    changes = dict_changes(old, new, ignore=("data",))
    assert changes == [("lr", 0.001, 0.002), ("model.hidden_size", 32, None), ("model.layers", 2, None),
                       ("model.preset", None, "tiny"), ("tags", [1], [1, 2])]
    # What was set comes before what went null with it, so the preset is not among the "more".
    assert describe_changes(changes, prefix="pretrain.") == (
        "pretrain.lr: 0.001 → 0.002, pretrain.model.preset: null → tiny, pretrain.tags: [1] → [1, 2], and 2 more")


def _first_sentence(doc: str) -> str:
    text = " ".join(doc.split())
    end = re.search(r"\.\s+(?=[A-Z0-9`])", text)  # not at "e.g. en"
    return text[: end.start() + 1] if end else text


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name != "pipeline"],
                         ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED if p.parent.name != "pipeline"])
def test_shipped_yaml_comments_state_the_schemas_meaning(path):
    """The comment above each key in a shipped config starts from what the schema says the key means (the first
    sentence of its docstring; a justification may follow), so the files users copy cannot drift from the code."""
    from bertcli.schemas import ModelConfig

    schema = CONFIG_SCHEMAS[path.parent.name]
    docs = {"": field_docs(schema), "  ": field_docs(ModelConfig)}  # top level; the model: section (pretrain)
    comment: list[str] = []
    stale = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            comment.append(line.lstrip()[1:].strip())
            continue
        key = re.match(r"^( *)([a-z_]+):", line)
        if key and key.group(2) in docs.get(key.group(1), {}):
            meaning = _first_sentence(docs[key.group(1)][key.group(2)])
            if meaning not in " ".join(" ".join(comment).split()):
                stale.append(f"{key.group(2)}: expected {meaning!r}")
        comment = []
    assert not stale, f"{path}: comments that do not state the schema's meaning:\n" + "\n".join(stale)


def test_config_show_run_checks_the_stage_sections_as_bert_run_does(tmp_path):
    """`bert config show run` reports what `bert run` would refuse in the stage sections (unknown keys, bad values,
    a model shorter than the pairs), not only the pipeline's own keys."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("input: [c.txt]\nstages: [train-vocab, pairs, pretrain]\n", encoding="utf-8")
    sets = ["pretrain.bogus=1", "pairs.dupe_factor=abc"]
    shown = runner.invoke(app, ["config", "show", "run", "--config", str(pipeline),
                                *[a for s in sets for a in ("--set", s)]])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.stdout)["pretrain"] == {"bogus": 1}
    warnings = [line for line in shown.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any("unknown key 'pretrain.bogus'" in w for w in warnings)
    assert any("key 'pairs.dupe_factor' (from --set pairs.dupe_factor=abc): got 'abc'" in w for w in warnings)
    refused = runner.invoke(app, ["run", str(pipeline), "--dry-run", *[a for s in sets for a in ("--set", s)]])
    assert refused.exit_code == 2 and "2 problems" in refused.stderr
    for warning in warnings:  # the same problems, word for word
        assert warning.removeprefix("warning: ").split(" (valid keys")[0] in refused.stderr
    clean = runner.invoke(app, ["config", "show", "run", "--config", str(pipeline)])
    assert clean.exit_code == 0 and "warning" not in clean.stderr

"""bertcli.artifacts: manifests with file hashes, atomic output directories, and load_data's checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertcli import artifacts
from bertcli.errors import ArtifactError, OutputExistsError
from bertcli.schemas import MaskConfig
from bertcli.vocab import load_tokenizer


def test_manifest_lists_every_data_file_and_the_content_hash_covers_them(tmp_path):
    with artifacts.atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"abc")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("x")
        manifest = artifacts.write_manifest(tmp, "masked", MaskConfig(), stats={"n": 1}, inputs={})
    out = tmp_path / "out"
    assert set(manifest["files"]) == {"a.bin", "sub/b.txt"}
    assert manifest["files"]["a.bin"] == {"bytes": 3, "sha256": artifacts.file_sha256(out / "a.bin")}
    assert manifest["content_hash"] == artifacts.content_hash(out)
    assert artifacts.read_bertcli_manifest(out)["stats"] == {"n": 1}
    artifacts.verify_files(out, manifest)
    (out / "a.bin").write_bytes(b"abd")  # same size, other bytes
    with pytest.raises(ArtifactError, match="sha256"):
        artifacts.verify_files(out, manifest)
    (out / "a.bin").write_bytes(b"ab")
    with pytest.raises(ArtifactError, match="2 bytes"):
        artifacts.verify_files(out, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left


def test_check_output_knows_bertcli_artifacts_from_other_folders(tmp_path):
    assert artifacts.check_output(tmp_path / "new", overwrite=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    artifacts.check_output(tmp_path / "empty", overwrite=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"name": "an extension"}))
    with pytest.raises(OutputExistsError, match="not a bertcli artifact"):
        artifacts.check_output(other, overwrite=True)
    with pytest.raises(OutputExistsError, match="inside"):
        artifacts.check_output(tmp_path / "corpus" / "tok", overwrite=True, inputs=(tmp_path / "corpus",))


def test_overwrite_replaces_only_its_own_stage_with_a_file_list(tmp_path):
    def artifact(name: str, manifest: dict) -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "data.bin").write_bytes(b"x")
        (out / "manifest.json").write_text(json.dumps(
            {"format_version": 1, "stage": "pairs", "bertcli_version": "0", **manifest}))
        return out

    listed = artifact("listed", {"files": {"data.bin": {"bytes": 1, "sha256": "-"}}})
    assert artifacts.check_output(listed, overwrite=True, stage="pairs") == listed
    with pytest.raises(OutputExistsError, match="holds a pairs artifact, which masked does not replace"):
        artifacts.check_output(listed, overwrite=True, stage="masked")
    unlisted = artifact("unlisted", {})  # a run, or an artifact from before manifests listed their files
    with pytest.raises(OutputExistsError, match="does not list its files"):
        artifacts.check_output(unlisted, overwrite=True, stage="pairs")
    with pytest.raises(OutputExistsError, match="already holds a bertcli artifact"):
        artifacts.check_output(unlisted, overwrite=False, stage="pairs")
    assert (unlisted / "data.bin").read_bytes() == b"x"


def test_load_data_checks_the_tokenizer_against_the_manifest(masked_data, tmp_path, tiny_tokenizer):
    data = artifacts.load_data(masked_data)
    assert data.kind == "masked" and data.vocab_size == load_tokenizer(tiny_tokenizer).vocab_size
    assert data.sequences_per_shard == 50 and data.arrays.num_sequences == 160
    copy = tmp_path / "masked"
    shutil.copytree(masked_data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["vocab_size"] = data.vocab_size + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="vocab_size"):
        artifacts.load_data(copy)
    with pytest.raises(ArtifactError, match="expected 'pairs'"):
        artifacts.load_data(masked_data, ("pairs",))

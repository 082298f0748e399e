"""docs/configuration.md is generated from the schemas' field docstrings and must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_config_docs.py"


def test_every_schema_field_is_documented() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dataclasses

    from bertcli.config import field_docs
    from bertcli.schemas import CONFIG_SCHEMAS, ModelConfig

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for schema in [*CONFIG_SCHEMAS.values(), ModelConfig]:
        docs = field_docs(schema)
        for f in dataclasses.fields(schema):
            assert docs.get(f.name), f"{schema.__name__}.{f.name} has no docstring"
            assert docs[f.name] in text.replace("\\|", "|")


def test_pretraining_doc_lists_every_key_resume_accepts() -> None:
    import re

    from bertcli.config import keys_with_role
    from bertcli.schemas import PretrainConfig

    text = (ROOT / "docs" / "pretraining.md").read_text(encoding="utf-8")
    paragraph = re.search(r"Only `output`.*?may change on resume", text, re.S)
    assert paragraph, "docs/pretraining.md lost its list of the keys --resume accepts"
    named = set(re.findall(r"`([a-z_]+)`", paragraph.group(0)))
    assert named == set(keys_with_role(PretrainConfig, "resumable"))

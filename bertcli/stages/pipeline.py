"""`bert run`: one YAML drives train-vocab → pairs → mask → pretrain, skipping stages whose artifact is up to date."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bertcli.config import build_config, config_hash, load_config
from bertcli.errors import ConfigError, OutputExistsError
from bertcli.schemas import (
    MaskConfig,
    PairsConfig,
    PipelineConfig,
    PretrainConfig,
    TrainVocabConfig,
)

SCHEMAS: dict[str, type] = {
    "train-vocab": TrainVocabConfig,
    "pairs": PairsConfig,
    "mask": MaskConfig,
    "pretrain": PretrainConfig,
}
SECTION = {"train-vocab": "train_vocab", "pairs": "pairs", "mask": "mask", "pretrain": "pretrain"}
SUBDIR = {"train-vocab": "tokenizer", "pairs": "pairs", "mask": "masked", "pretrain": "pretrain"}
MANIFEST_STAGES = {
    "train-vocab": ("train-vocab",),
    "pairs": ("pairs",),
    "mask": ("mask", "masked"),
    "pretrain": ("pretrain",),
}


@dataclass
class StagePlan:
    """One stage of the pipeline: its resolved config and what `bert run` will do with it."""

    name: str
    cfg: Any
    output: Path
    action: str = "run"
    """run (no artifact yet), skip (up to date), rerun (stale; needs --overwrite), resume (unfinished pretrain)."""
    reason: str = ""
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------- configuration


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> tuple[PipelineConfig, list[StagePlan]]:
    """The pipeline YAML (with `--set a.b=v` overrides) and every stage's resolved config; all problems of the
    stage sections at once."""
    cfg = load_config(PipelineConfig, path, overrides)
    plans, problems = _stage_configs(cfg, f" in {path}")
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0], hint=f"fix {path}; `bert config show STAGE` lists each stage's keys")
        raise ConfigError(
            f"{len(problems)} problems with the pipeline {path}:\n  - " + "\n  - ".join(problems),
            hint="fix them all, then run again",
        )
    return cfg, plans


def _origins(data: dict, prefix: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        out[f"{prefix}{key}"] = where
        if isinstance(value, dict):
            out.update(_origins(value, f"{prefix}{key}.", where))
    return out


def _stage_configs(cfg: PipelineConfig, where: str) -> tuple[list[StagePlan], list[str]]:
    """Each stage's config: its section's keys over what the pipeline fills in (paths chained stage to stage)."""
    workdir = Path(cfg.workdir)
    problems: list[str] = []
    plans: list[StagePlan] = []
    previous: dict[str, str] = {}  # stage name → its output path, for the stages after it
    for name in cfg.stages:
        section = dict(getattr(cfg, SECTION[name]))
        filled: dict[str, Any] = {"output": str(workdir / SUBDIR[name])}
        if name in ("train-vocab", "pairs"):
            filled["input"] = list(cfg.input)
        # A stage reads the output of the stage before it; one left out of `stages` is expected in the workdir.
        if name == "pairs":
            filled["tokenizer"] = previous.get("train-vocab", str(workdir / SUBDIR["train-vocab"]))
        if name == "mask":
            filled["input"] = previous.get("pairs", str(workdir / SUBDIR["pairs"]))
        if name == "pretrain":
            # Without a mask stage in this run, pretrain masks the pairs artifact on the fly (dynamic masking).
            filled["data"] = previous.get("mask") or previous.get("pairs") or str(workdir / SUBDIR["mask"])
        if cfg.seed is not None:
            filled["seed"] = cfg.seed
        data = {**filled, **section}
        prefix = SECTION[name] + "."
        stage_cfg, stage_problems = build_config(SCHEMAS[name], data, prefix, _origins(section, prefix, where))
        # Cross-field checks name bare keys ("key 'input': …"): say which section they belong to.
        problems.extend(p if p.startswith(("unknown key", f"key '{prefix}")) else f"{SECTION[name]}: {p}"
                        for p in stage_problems)
        if stage_cfg is None:
            continue
        output = Path(stage_cfg.output)
        previous[name] = str(output)
        plans.append(StagePlan(name=name, cfg=stage_cfg, output=output))
    return plans, problems


# ---------------------------------------------------------------- up-to-date checks


def stage_hash(name: str, cfg: Any) -> str:
    """What makes two configs of a stage produce the same artifact (paths and worker counts left out)."""
    return config_hash(cfg)


def _stored_config(name: str, output: Path) -> Any | None:
    """The config an artifact was made with, read back from its config.yaml (None if unreadable)."""
    path = output / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_config(SCHEMAS[name], path, validate=False)
    except ConfigError:
        return None


def _corpus_fingerprints(cfg: Any) -> list[str]:
    from bertcli.corpus import resolve_inputs
    from bertcli.artifacts import file_fingerprints

    return [f["sha256"] for f in file_fingerprints(resolve_inputs(list(cfg.input)))]


def _inputs_changed(name: str, cfg: Any, manifest: dict, upstream: dict[str, dict]) -> str:
    """Why the artifact's recorded inputs differ from the inputs now ('' when they match)."""
    inputs = manifest.get("inputs") or {}
    if name in ("train-vocab", "pairs") and "corpus" in inputs:
        recorded = [f.get("sha256") for f in inputs["corpus"]]
        if recorded != _corpus_fingerprints(cfg):
            return "the corpus changed"
    if name == "pairs":
        from bertcli.vocab import tokenizer_hash

        tok_dir = Path(cfg.tokenizer)
        recorded = (inputs.get("tokenizer") or {}).get("hash")
        if recorded and (tok_dir / "tokenizer.json").is_file() and recorded != tokenizer_hash(tok_dir):
            return "the tokenizer changed"
    if name == "mask":
        recorded = (inputs.get("pairs") or {}).get("content_hash")
        current = (upstream.get("pairs") or _manifest_or_empty(Path(cfg.input))).get("content_hash")
        if recorded and current and recorded != current:
            return "the pairs artifact changed"
    if name == "pretrain":
        recorded = (inputs.get("data") or {}).get("content_hash")
        current = (upstream.get("mask") or upstream.get("pairs") or _manifest_or_empty(Path(cfg.data))).get(
            "content_hash"
        )
        if recorded and current and recorded != current:
            return "its training data changed"
    return ""


def _manifest_or_empty(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def plan_stage(plan: StagePlan, upstream: dict[str, dict], upstream_ran: bool) -> None:
    """Decide whether the stage runs, is skipped (its artifact is up to date) or must replace a stale artifact."""
    out = plan.output
    if not out.exists():
        plan.action, plan.reason = "run", "no artifact yet"
        return
    manifest = _manifest_or_empty(out)
    if manifest.get("stage") not in MANIFEST_STAGES[plan.name]:
        if plan.name == "pretrain" and (out / "config.yaml").is_file():
            stored = _stored_config(plan.name, out)
            if stored is not None and stage_hash(plan.name, stored) == stage_hash(plan.name, plan.cfg):
                plan.action, plan.reason = "resume", "an unfinished run with the same config"
                return
        plan.action, plan.reason = "rerun", "it exists but is not a finished artifact of this stage"
        return
    stored = _stored_config(plan.name, out)
    if stored is None or stage_hash(plan.name, stored) != stage_hash(plan.name, plan.cfg):
        plan.action, plan.reason = "rerun", "it was made with another config"
        return
    if upstream_ran:
        plan.action, plan.reason = "rerun", "a stage before it was rebuilt"
        return
    changed = _inputs_changed(plan.name, plan.cfg, manifest, upstream)
    if changed:
        plan.action, plan.reason = "rerun", changed
        return
    plan.action, plan.reason, plan.manifest = "skip", "up to date (same config and inputs)", manifest


# ---------------------------------------------------------------- running


def _run_stage(plan: StagePlan, overwrite: bool) -> dict:
    if plan.name == "train-vocab":
        from bertcli.stages import train_vocab

        return train_vocab.run(plan.cfg, overwrite=overwrite)
    if plan.name == "pairs":
        from bertcli.stages import pairs

        return pairs.run(plan.cfg, overwrite=overwrite)
    if plan.name == "mask":
        from bertcli.stages import mask

        return mask.run(plan.cfg, overwrite=overwrite)
    from bertcli.stages import pretrain

    return pretrain.run(plan.cfg, resume=plan.action == "resume", overwrite=overwrite and plan.action != "resume")


def run(
    path: str | Path,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    dry_run: bool = False,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[StagePlan]:
    """Run the pipeline's stages in order; a stage whose artifact has the same config and inputs is skipped."""
    _cfg, plans = load_pipeline(path, overrides)
    upstream: dict[str, dict] = {}
    upstream_ran = False
    total = len(plans)
    for i, plan in enumerate(plans, start=1):
        plan_stage(plan, upstream, upstream_ran)
        head = f"[{i}/{total}] {plan.name} → {plan.output}"
        if dry_run:
            report(f"{head}: would {plan.action} ({plan.reason})")
            upstream_ran = upstream_ran or plan.action != "skip"
            continue
        if plan.action == "skip":
            report(f"{head}: skipped, {plan.reason}")
            upstream[plan.name] = plan.manifest
            continue
        if plan.action == "rerun" and not overwrite:
            raise OutputExistsError(
                f"stage {plan.name}: '{plan.output}' exists but {plan.reason}",
                hint="pass --overwrite to rebuild it (and the stages after it), or change workdir",
            )
        report(f"{head}: {'resuming' if plan.action == 'resume' else 'running'} ({plan.reason})")
        start = time.perf_counter()
        manifest = _run_stage(plan, overwrite=overwrite)
        plan.seconds = time.perf_counter() - start
        if manifest is None:  # pretrain returns None on ranks other than 0 under torchrun
            manifest = {}
        plan.manifest = manifest
        upstream[plan.name] = manifest
        upstream_ran = True
        report(f"{head}: done in {plan.seconds:.1f} s")
    return plans


def final_model(plans: list[StagePlan]) -> Path | None:
    """The model the pipeline produced (pretrain's final/), if it ran pretrain."""
    for plan in plans:
        if plan.name == "pretrain":
            return plan.output / "final"
    return None

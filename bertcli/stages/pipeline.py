"""`bert run`: one YAML drives train-vocab → pairs → mask → pretrain, skipping stages whose artifact is up to date."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bertcli.artifacts import check_output, foreign_entries, read_bertcli_manifest
from bertcli.config import (
    build_config,
    config_changes,
    config_hash,
    describe_changes,
    load_config,
    override_origins,
    where_to_fix,
)
from bertcli.errors import BertcliError, ConfigError, OutputExistsError
from bertcli.run_dir import run_dir_problem
from bertcli.schemas import STAGES, PipelineConfig, StageInput


@dataclass
class StagePlan:
    """One stage of the pipeline: its resolved config and what `bert run` will do with it."""

    name: str
    cfg: Any
    output: Path
    action: str = "run"
    """run (no artifact yet), skip (up to date), rerun (stale; needs --overwrite), resume (unfinished pretrain),
    blocked (files bertcli did not write are in its directory: --overwrite cannot replace them)."""
    reason: str = ""
    fix: str = ""
    """blocked: what the user can do about it."""
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------- configuration


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> tuple[PipelineConfig, list[StagePlan]]:
    """The pipeline YAML (with `--set a.b=v` overrides) and every stage's resolved config; all problems of the
    stage sections at once."""
    cfg = load_config(PipelineConfig, path, overrides)
    if cfg.workdir is None:
        cfg.workdir = str(default_workdir(path))
    plans, problems = stage_plans(cfg, path, overrides)
    if problems:
        if len(problems) == 1:
            fix = where_to_fix(problems[0], str(path))
            stage = next((name for name, spec in STAGES.items() if f"key '{spec.section}." in problems[0]), "run")
            raise ConfigError(problems[0], hint=f"fix {fix}; `bert config show {stage}` lists its keys")
        raise ConfigError(
            f"{len(problems)} problems with the pipeline {path}:\n  - " + "\n  - ".join(problems),
            hint="fix them all, then run again",
        )
    return cfg, plans


def stage_plans(
    cfg: PipelineConfig, path: str | Path | None, overrides: Sequence[str] = ()
) -> tuple[list[StagePlan], list[str]]:
    """Each stage's plan and every problem of the stage sections and between stages (what load_pipeline refuses,
    listed instead of raised: `bert config show run` reports them). cfg is left as it is."""
    if cfg.workdir is None:
        cfg = dataclasses.replace(cfg, workdir=str(default_workdir(path)))
    plans, problems = _stage_configs(cfg, f" in {path}" if path else "", override_origins(overrides))
    return plans, problems + _cross_stage_problems(plans)


def default_workdir(path: str | Path | None) -> Path:
    """Where a pipeline without `workdir` writes: runs/<its file's name>."""
    return Path("runs") / (Path(path).name.removesuffix(".yml").removesuffix(".yaml") if path else "run")


def _origins(data: dict, prefix: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        out[f"{prefix}{key}"] = where
        if isinstance(value, dict):
            out.update(_origins(value, f"{prefix}{key}.", where))
    return out


def _stage_configs(
    cfg: PipelineConfig, where: str, set_origins: dict[str, str]
) -> tuple[list[StagePlan], list[str]]:
    """Each stage's config: its section's keys over what the pipeline fills in (paths chained stage to stage).
    where: the file the sections came from; set_origins: the keys `--set` gave (override_origins)."""
    workdir = Path(cfg.workdir)
    problems: list[str] = []
    plans: list[StagePlan] = []
    previous: dict[str, str] = {}  # stage name → its output path, for the stages after it
    for name in cfg.stages:
        spec = STAGES[name]
        section = dict(getattr(cfg, spec.section))
        filled: dict[str, Any] = {"output": str(workdir / spec.workdir_subdir)}
        if spec.reads_corpus:
            filled["input"] = list(cfg.input)
        # A stage reads the output of a stage before it; one left out of `stages` is expected in the workdir.
        for given in spec.inputs:
            ran = [previous[s] for s in given.stages if s in previous]
            filled[given.key] = ran[0] if ran else str(workdir / STAGES[given.stages[0]].workdir_subdir)
        if cfg.seed is not None:
            filled["seed"] = cfg.seed
        data = {**filled, **section}
        prefix = spec.section + "."
        origins = {**_origins(section, prefix, where), **set_origins}
        stage_cfg, stage_problems = build_config(spec.schema, data, prefix, origins)
        # Cross-field checks name bare keys ("key 'input': …"): say which section they belong to.
        problems.extend(p if p.startswith(("unknown key", f"key '{prefix}")) else f"{spec.section}: {p}"
                        for p in stage_problems)
        if stage_cfg is None:
            continue
        output = Path(stage_cfg.output)
        previous[name] = str(output)
        plans.append(StagePlan(name=name, cfg=stage_cfg, output=output))
    # A section of a stage left out of `stages` is not run now, but a misspelt key in it is a mistake all the same
    # (it would surface only on the run that includes the stage, perhaps hours later).
    for name, spec in STAGES.items():
        section = getattr(cfg, spec.section, None) if name not in cfg.stages else None
        if section:
            prefix = spec.section + "."
            origins = {**_origins(section, prefix, where), **set_origins}
            _, stage_problems = build_config(spec.schema, dict(section), prefix, origins)
            problems.extend(p for p in stage_problems if p.startswith("unknown key"))
    return plans, problems


def _cross_stage_problems(plans: list[StagePlan]) -> list[str]:
    """What a later stage would refuse about an earlier stage's output, found before anything runs (pretrain
    checks it too, but only after train-vocab and pairs have spent their time)."""
    by_name = {plan.name: plan.cfg for plan in plans}
    pairs, pretrain = by_name.get("pairs"), by_name.get("pretrain")
    if pairs is None or pretrain is None or pretrain.init_from:
        return []
    positions = pretrain.model.max_position_embeddings
    if pairs.max_seq_length <= positions:
        return []
    return [f"key 'pretrain.model.max_position_embeddings': {positions} is below pairs.max_seq_length "
            f"{pairs.max_seq_length}; set it to at least {pairs.max_seq_length}"]


# ---------------------------------------------------------------- up-to-date checks


def _stored_config(name: str, output: Path) -> Any | None:
    """The config an artifact was made with, read back from its config.yaml (None if unreadable)."""
    path = output / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_config(STAGES[name].schema, path, validate=False)
    except ConfigError:
        return None


def _corpus_fingerprints(cfg: Any) -> list[str]:
    from bertcli.artifacts import file_fingerprints
    from bertcli.corpus import resolve_inputs

    return [f["sha256"] for f in file_fingerprints(resolve_inputs(list(cfg.input)))]


def _identity_now(given: StageInput, cfg: Any, upstream: dict[str, dict]) -> str | None:
    """The hash that identifies an input as it is now: a tokenizer's hash, or an artifact's content hash (from the
    manifest of the stage that just produced it in this pipeline, else from its directory)."""
    path = Path(getattr(cfg, given.key))
    if given.kind == "tokenizer":
        from bertcli.vocab import tokenizer_hash

        return tokenizer_hash(path) if (path / "tokenizer.json").is_file() else None
    produced = [upstream[s] for s in given.stages if upstream.get(s)]
    return (produced[0] if produced else _manifest_or_empty(path)).get("content_hash")


def _inputs_changed(name: str, cfg: Any, manifest: dict, upstream: dict[str, dict]) -> str:
    """Why the artifact's recorded inputs differ from the inputs now ('' when they match)."""
    spec = STAGES[name]
    inputs = manifest.get("inputs") or {}
    if spec.reads_corpus and "corpus" in inputs:
        recorded = [f.get("sha256") for f in inputs["corpus"]]
        if recorded != _corpus_fingerprints(cfg):
            return "the corpus changed"
    for given in spec.inputs:
        recorded = (inputs.get(given.recorded_as) or {}).get("hash" if given.kind == "tokenizer" else "content_hash")
        current = _identity_now(given, cfg, upstream)
        if recorded and current and recorded != current:
            return f"its {given.what} changed"
    return ""


def _run_data_changed(plan: StagePlan, upstream: dict[str, dict]) -> str:
    """Why an unfinished run's data differs from the data it began on ('' when it does not, or is not known): it
    has no manifest yet, so its newest checkpoint's record is what holds the data it trained on."""
    from bertcli.checkpoints import newest_run_record  # imports torch: only for a run directory

    recorded = (newest_run_record(plan.output) or {}).get("data_content_hash")
    for given in STAGES[plan.name].inputs:
        current = _identity_now(given, plan.cfg, upstream) if given.kind == "artifact" else None
        if recorded and current and recorded != current:
            return f"its {given.what} changed since it began"
    return ""


def _manifest_or_empty(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def plan_stage(plan: StagePlan, upstream: dict[str, dict], upstream_ran: bool) -> None:
    """Decide whether the stage runs, is skipped (its artifact is up to date), must replace a stale artifact, or
    cannot (what is in its directory is not bertcli's to replace)."""
    _plan_action(plan, upstream, upstream_ran)
    # a new run's directory may still be refused: inside its data (pretrain.output set into workdir/pairs)
    if plan.action == "rerun" or (plan.action == "run" and STAGES[plan.name].resumable):
        blocked = _in_the_way(plan)
        if blocked:
            plan.action, (plan.reason, plan.fix) = "blocked", blocked


def _plan_action(plan: StagePlan, upstream: dict[str, dict], upstream_ran: bool) -> None:
    spec = STAGES[plan.name]
    out = plan.output
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):  # an empty folder: the stage takes it as is
        plan.action, plan.reason = "run", "no artifact yet"
        return
    manifest = _manifest_or_empty(out)
    # A pretraining run continues (--resume) through a change of the keys --resume accepts (max_steps,
    # time_budget_s, log_every, …): starting it over would throw its steps away.
    ignore = "resumable" if spec.resumable else "execution"
    if manifest.get("stage") != spec.manifest_stage:
        if spec.resumable and (out / "config.yaml").is_file():
            stored = _stored_config(plan.name, out)
            if stored is not None and config_hash(stored, ignore) == config_hash(plan.cfg, ignore):
                if upstream_ran:  # its data is rebuilt under it: it cannot continue
                    plan.action, plan.reason = "rerun", "an unfinished run, but a stage before it is rebuilt"
                elif changed := _run_data_changed(plan, upstream):  # rebuilt by hand since: --resume would refuse
                    plan.action, plan.reason = "rerun", f"an unfinished run, but {changed}"
                else:
                    plan.action, plan.reason = "resume", "an unfinished run" + _resumed_with(stored, plan)
                return
        plan.action, plan.reason = "rerun", "it is not a finished artifact of this stage"
        return
    stored = _stored_config(plan.name, out)
    if stored is None or config_hash(stored, ignore) != config_hash(plan.cfg, ignore):
        changes = [] if stored is None else config_changes(stored, plan.cfg)
        plan.action, plan.reason = "rerun", "it was made with another config" + (
            f" ({describe_changes(changes, prefix=spec.section + '.')})" if changes else "")
        return
    if upstream_ran:
        plan.action, plan.reason = "rerun", "a stage before it is rebuilt"
        return
    changed = _inputs_changed(plan.name, plan.cfg, manifest, upstream)
    if changed:
        plan.action, plan.reason = "rerun", changed
        return
    resumable_changed = config_hash(stored) != config_hash(plan.cfg)  # keys --resume accepts (pretrain only)
    if resumable_changed and _limits_raised(stored, plan.cfg):
        plan.action, plan.reason = "resume", "a finished run" + _resumed_with(stored, plan) + (
            "; it continues if the limit that stopped it was raised")
        return
    plan.action, plan.manifest = "skip", manifest  # log_every, device, …: nothing to do for a finished run
    plan.reason = ("up to date: a finished run" + _resumed_with(stored, plan) if resumable_changed
                   else "up to date: same config and inputs")


def _limits_raised(stored: Any, cfg: Any) -> bool:
    """Whether a finished pretraining run may go on: max_steps or time_budget_s raised (a budget removed too)."""
    budget_raised = stored.time_budget_s is not None and (cfg.time_budget_s is None
                                                          or cfg.time_budget_s > stored.time_budget_s)
    return cfg.max_steps > stored.max_steps or budget_raised


def _resumed_with(stored: Any, plan: StagePlan) -> str:
    changes = config_changes(stored, plan.cfg)
    if not changes:
        return " with the same config"
    return f", with keys --resume accepts changed ({describe_changes(changes, prefix=STAGES[plan.name].section + '.')})"


def _in_the_way(plan: StagePlan) -> tuple[str, str] | None:
    """(why, what to do) when --overwrite could not rebuild the stage's directory: bertcli never deletes files it did
    not write, nor another stage's artifact, nor one whose manifest does not list its files. None when it could.
    The stage itself would refuse the same way, but only after the stages before it ran."""
    spec = STAGES[plan.name]
    keep = "; bertcli never deletes files it did not write"
    if plan.output.exists() and not plan.output.is_dir():
        return "is not a directory, where the stage's directory goes", f"move '{plan.output}' away, or change workdir"
    mine = f"move your files out of '{plan.output}', or change workdir{keep}"
    if spec.resumable:  # a pretraining run keeps the user's files beside its own; anything else is not a run
        problem = run_dir_problem(plan.output, Path(plan.cfg.data))
        outside = (f"set {spec.section}.output outside the data, or leave it to workdir; bertcli never writes into "
                   "its inputs")
        return None if problem is None else (problem.what, mine if problem.kind == "users" else outside)
    try:
        check_output(plan.output, overwrite=True, stage=spec.manifest_stage)
    except OutputExistsError as exc:
        why = exc.message.replace(f"output '{plan.output}' ", "", 1)
        if read_bertcli_manifest(plan.output) is not None and not foreign_entries(plan.output):
            return why, f"remove the old artifact '{plan.output}' yourself, or change workdir"  # bertcli's, not yours
        return why, mine
    return None


# ---------------------------------------------------------------- running


def _run_stage(plan: StagePlan, overwrite: bool) -> dict | None:
    """Import the stage's module (only now: pretrain's imports torch) and call its run(cfg, …)."""
    spec = STAGES[plan.name]
    module = importlib.import_module(spec.module)
    if spec.resumable:
        resume = plan.action == "resume"
        return module.run(plan.cfg, resume=resume, overwrite=overwrite and not resume)
    return module.run(plan.cfg, overwrite=overwrite)


@contextlib.contextmanager
def _in_pipeline_terms(stage: str, pipeline_file: Path) -> Iterator[None]:
    """A stage's refusal in the pipeline's terms: which stage, which section's key, where relative input paths are
    read from."""
    try:
        yield
    except BertcliError as exc:
        section = STAGES[stage].section
        exc.message = f"stage {stage}: " + exc.message.replace("key '", f"key '{section}.", 1)
        exc.args = (exc.message,)
        if exc.message.startswith(f"stage {stage}: input ") and exc.message.endswith(("does not exist",
                                                                                         "matches no file")):
            exc.hint = (f"fix input in {pipeline_file}; its relative paths are read from the directory bert runs "
                        f"in ({Path.cwd()})")
        raise


def _run_stage_in_context(plan: StagePlan, overwrite: bool, pipeline_file: Path) -> dict | None:
    """_run_stage, with a stage's refusal put in the pipeline's terms (which stage, which section's key, paths
    read from the current directory), and the workdir folders this stage created removed again if it left them
    empty."""
    workdir = plan.output.parent
    existing = next(d for d in [workdir, *workdir.parents] if d.exists())  # a cwd-relative path ends at "."
    try:
        with _in_pipeline_terms(plan.name, pipeline_file):
            return _run_stage(plan, overwrite=overwrite)
    finally:  # the folders this stage made on the way to its workdir, if it failed leaving them empty
        for folder in [workdir, *workdir.parents]:
            if folder == existing or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def run(
    path: str | Path,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    dry_run: bool = False,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[StagePlan]:
    """Run the pipeline's stages in order; a stage whose artifact has the same config and inputs is skipped."""
    cfg, plans = load_pipeline(path, overrides)
    workdir = Path(cfg.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"key 'workdir' in {path}: '{workdir}' is a file, not a directory",
                          hint="set workdir to a directory (it is created if missing)")
    heads = [f"[{i}/{len(plans)}] {plan.name} → {plan.output}" for i, plan in enumerate(plans, start=1)]
    _plan_all(plans, Path(path))  # every stage's action before any runs: a refusal comes before the others' work
    if dry_run:
        for head, plan in zip(heads, plans):
            if plan.action == "blocked":
                report(f"{head}: would stop, it {plan.reason}; {plan.fix}")
            else:
                needs = "; needs --overwrite" if plan.action == "rerun" and not overwrite else ""
                report(f"{head}: would {plan.action} ({plan.reason}{needs})")
        return plans
    for plan in plans:
        _refuse_if_stuck(plan, overwrite)
    _refuse_data_stages_in_many_processes(plans, Path(path), overrides)
    for head, plan in zip(heads, plans):
        if plan.action == "skip":
            report(f"{head}: skipped, {plan.reason}")
            continue
        report(f"{head}: {'resuming' if plan.action == 'resume' else 'running'} ({plan.reason})")
        start = time.perf_counter()
        manifest = _run_stage_in_context(plan, overwrite, Path(path))
        plan.seconds = time.perf_counter() - start
        plan.manifest = manifest if manifest is not None else {}  # None on ranks other than 0 under torchrun
        report(f"{head}: done in {plan.seconds:.1f} s")
    return plans


def _plan_all(plans: list[StagePlan], pipeline_file: Path) -> None:
    """Each stage's action, decided once before any runs. A stage's action depends only on the artifacts on disk
    and on whether a stage before it runs (then it is rebuilt too), so running the stages changes no decision. A
    corpus that cannot be found is refused here, dry run or not."""
    from bertcli.corpus import resolve_inputs

    upstream: dict[str, dict] = {}
    upstream_ran = False
    for plan in plans:
        with _in_pipeline_terms(plan.name, pipeline_file):
            if STAGES[plan.name].reads_corpus:
                resolve_inputs(plan.cfg.input)
            plan_stage(plan, upstream, upstream_ran)
        if plan.action == "skip":
            upstream[plan.name] = plan.manifest
        upstream_ran = upstream_ran or plan.action != "skip"


def _refuse_data_stages_in_many_processes(plans: list[StagePlan], pipeline_file: Path,
                                         overrides: Sequence[str]) -> None:
    """Under torchrun every process runs `bert run`: pretraining shares the work among them, but a data stage
    would run in each, every process writing the same artifact. They are built first, with one process."""
    world = os.environ.get("WORLD_SIZE", "1")
    processes = int(world) if world.isdecimal() else 1
    waiting = [plan for plan in plans if plan.action != "skip" and not STAGES[plan.name].resumable]
    if processes > 1 and waiting:
        before = [plan.name for plan in plans if not STAGES[plan.name].resumable]
        stale = " --overwrite" if any(plan.action == "rerun" for plan in waiting) else ""
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)  # the same configs, or the data stays stale
        raise ConfigError(
            f"bert run under torchrun ({processes} processes): stage {waiting[0].name} would run in every process",
            hint=f"build the data first with one process: bert run {pipeline_file}{sets} --set "
            f"'stages=[{', '.join(before)}]'{stale}; then the same torchrun command pretrains",
        )


def _refuse_if_stuck(plan: StagePlan, overwrite: bool) -> None:
    """A stage that cannot run as asked: something not bertcli's to replace in its directory, or a stale artifact
    without --overwrite."""
    if plan.action == "blocked":
        raise OutputExistsError(f"stage {plan.name}: '{plan.output}' {plan.reason}", hint=plan.fix)
    if plan.action == "rerun" and not overwrite:
        raise OutputExistsError(
            f"stage {plan.name}: '{plan.output}' exists but {plan.reason}",
            hint="pass --overwrite to rebuild it (and the stages after it), or change workdir",
        )


def final_model(plans: list[StagePlan]) -> Path | None:
    """The model the pipeline produced (pretrain's final/), if it ran a stage that makes one."""
    for plan in plans:
        subdir = STAGES[plan.name].model_subdir
        if subdir is not None:
            return plan.output / subdir
    return None

"""The `bert` command line: each command converts its arguments, calls one stage or tool function and prints."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from bertcli import __version__
from bertcli.errors import BertcliError, environment_problem

app = typer.Typer(
    name="bert",
    help="From raw text to your own pretrained BERT: train-vocab → pairs → mask → pretrain → predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect stage configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/<stage>/).")
SetOpt = typer.Option(None, "--set", help="Override a config key: --set a.b=value (repeatable).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace the output directory if it exists.")


def _debug() -> bool:
    return os.environ.get("BERTCLI_DEBUG", "") not in ("", "0")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): rank 0 speaks for the run, the others for themselves."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdecimal() else 0


def _close_progress_bars() -> None:
    """End any progress bar still drawn, so that the error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def report_errors(func: Callable) -> Callable:
    """Typed errors become `error: …` + a hint and exit code 2; anything else exit code 1, one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BertcliError as exc:
            if _debug():
                traceback.print_exc()
            _close_progress_bars()
            rank = _rank()
            if exc.relayed and not _debug():  # rank 0's error, which rank 0 prints
                raise typer.Exit(2) from None
            # under torchrun every rank checks the same config: `torchrun --local-ranks-filter 0` shows rank 0 alone
            typer.echo(f"error: {f'rank {rank}: ' if rank else ''}{exc.message}", err=True)
            if exc.hint:
                typer.echo(f"hint: {exc.hint}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            if _rank() == 0:  # the others may not see the run directory: rank 0's note is the one that holds
                from bertcli.run_dir import interrupted_note

                typer.echo(f"interrupted: {interrupted_note(kwargs.get('output'))}", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if _debug():
                traceback.print_exc()
            problem = environment_problem(exc)
            if problem is not None:  # a full disk, a read-only or occupied path: the user's to fix, exit 2
                typer.echo(f"error: {problem[0]}", err=True)
                typer.echo(f"hint: {problem[1]}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"error: unexpected failure: {type(exc).__name__}: {exc}", err=True)
            typer.echo("hint: rerun with BERTCLI_DEBUG=1 to see the traceback, and report it", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """From raw text to your own pretrained BERT."""


def _stage_config(stage: str, config: Optional[Path], set_: Optional[List[str]], flags: dict[str, Any]) -> Any:
    """The stage's config: schema defaults ← --config ← --set ← the command's own flags; checked."""
    from bertcli.config import load_config
    from bertcli.schemas import STAGES

    return load_config(STAGES[stage].schema, config, set_ or [], flags)


# ---------------------------------------------------------------- config


@config_app.command("show")
@report_errors
def config_show(
    stage: str = typer.Argument(
        ..., help="Stage name: train-vocab, pairs, mask, pretrain, finetune or run (the pipeline)."
    ),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    docs: bool = typer.Option(False, "--docs", help="Write each field's documentation as a comment above it."),
) -> None:
    """Print the effective config of STAGE as YAML (defaults ← --config ← --set); on stderr, every problem for which
    the command would refuse it."""
    from bertcli.config import config_to_yaml, load_config, validation_problems
    from bertcli.errors import ConfigError
    from bertcli.schemas import CONFIG_SCHEMAS

    if stage not in CONFIG_SCHEMAS:
        raise ConfigError(f"unknown stage '{stage}'", hint=f"choose one of {', '.join(CONFIG_SCHEMAS)}")
    cfg = load_config(CONFIG_SCHEMAS[stage], config, set_ or [], validate=False)
    problems = validation_problems(cfg)
    if stage == "run" and not problems:  # then the stage sections, against their stages' schemas, as `bert run`
        from bertcli.stages.pipeline import stage_plans
        problems = stage_plans(cfg, config, set_ or [])[1]
    typer.echo(config_to_yaml(cfg, comments=docs), nl=False)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)


# ---------------------------------------------------------------- train-vocab (stages/), tokenize (tools/)


@app.command("train-vocab")
@report_errors
def train_vocab(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    input_: Optional[List[str]] = typer.Option(
        None, "--input", "-i", help="Corpus file, directory or glob (repeatable)."
    ),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Tokenizer directory to write."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a WordPiece vocabulary; the directory loads with AutoTokenizer.from_pretrained."""
    from bertcli.errors import warn
    from bertcli.stages import train_vocab as stage

    cfg = _stage_config("train-vocab", config, set_, {"input": input_, "output": output})
    manifest = stage.run(cfg, overwrite=overwrite)
    stats = manifest["stats"]
    typer.echo(
        f"wrote {cfg.output}: {stats['vocab_size']} tokens ({manifest['algorithm']}), "
        f"{stats['sentences']:,} sentences in {stats['documents']:,} documents read"
        + (f"; {manifest['added_tokens']:,} appended to the {manifest['extended_from']['vocab_size']:,} of "
           f"{cfg.extend_from}" if cfg.extend_from else "")
    )
    if stats.get("skipped_other_files"):  # a .xz or .bz2 among the text would otherwise go unread without a word
        warn(f"{stats['skipped_other_files']:,} file(s) in the input directories were not read: their names are "
             "not corpus names (.txt, .gz, .zst, .jsonl, .parquet, …; docs/corpora.md). A file named in --input is "
             "read as text whatever its name (unless it names a format); other compressions (.xz, .bz2) need "
             "decompressing first")


@app.command("tokenize")
@report_errors
def tokenize(
    texts: List[str] = typer.Argument(..., help="Text(s) to tokenize."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="Tokenizer directory."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text: text, tokens, ids."),
) -> None:
    """Print the WordPiece pieces and ids of each TEXT ([CLS] and [SEP] included, as AutoTokenizer gives them)."""
    from bertcli.tools import inspect as tool

    for row in tool.tokenize(tokenizer, texts):
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
        else:
            typer.echo(" ".join(row["tokens"]))
            typer.echo(" ".join(str(i) for i in row["ids"]))


# ---------------------------------------------------------------- pairs, mask (stages/), inspect (tools/)


@app.command("pairs")
@report_errors
def pairs(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    input_: Optional[List[str]] = typer.Option(
        None, "--input", "-i",
        help="Corpus file, directory or glob (repeatable); or every part of a sharded run to merge.",
    ),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer directory (bert train-vocab)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Pairs artifact directory to write."),
    overwrite: bool = OverwriteOpt,
    shard_index: Optional[int] = typer.Option(
        None, "--shard-index", help="This job's part (0-based) of --num-shards."
    ),
    num_shards: Optional[int] = typer.Option(
        None, "--num-shards", help="Split the work into this many independent jobs."
    ),
) -> None:
    """Build NSP sentence pairs ([CLS] A [SEP] B [SEP]) from a corpus, as Google BERT does, streamed and parallel.

    Merge the parts of a sharded run with `bert pairs --input part-0 --input part-1 … --output DIR`.
    """
    from bertcli.stages import pairs as stage

    flags = {"input": input_, "tokenizer": tokenizer, "output": output, "shard_index": shard_index,
             "num_shards": num_shards}
    cfg = _stage_config("pairs", config, set_, flags)
    stats = stage.run(cfg, overwrite=overwrite)["stats"]
    typer.echo(
        f"wrote {cfg.output}: {stats['sequences']:,} sequences, {stats['tokens']:,} tokens, "
        f"IsNext {stats['is_next_share']:.1%} (forced random {stats['forced_random_share']:.1%}), "
        f"truncated {stats['truncation_rate']:.1%}"
    )


@app.command("mask")
@report_errors
def mask(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    input_: Optional[str] = typer.Option(None, "--input", "-i", help="Pairs artifact directory (bert pairs)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Masked artifact directory to write."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Mask a pairs artifact for MLM (static masking): exact selection count, 80/10/10, optional whole words."""
    from bertcli.stages import mask as stage

    cfg = _stage_config("mask", config, set_, {"input": input_, "output": output})
    stats = stage.run(cfg, overwrite=overwrite)["stats"]
    typer.echo(
        f"wrote {cfg.output}: {stats['sequences']:,} sequences, {stats['selected']:,} of {stats['candidates']:,} "
        f"candidate tokens selected ({stats['selection_rate']:.2%}): {stats['replaced_mask']:,} [MASK], "
        f"{stats['replaced_random']:,} random, {stats['kept']:,} kept"
    )


@app.command("inspect")
@report_errors
def inspect(
    directory: Path = typer.Argument(..., help="An artifact directory (pairs, masked, tokenizer, …)."),
    examples: int = typer.Option(3, "--examples", "-n", min=0, help="Decoded examples to print."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's stats as one JSON object, nothing else."),
) -> None:
    """Print an artifact's stats and decoded examples (segments, [MASK]s and their labels visible)."""
    from bertcli.tools import inspect as tool

    typer.echo(json.dumps(tool.stats(directory), ensure_ascii=False) if as_json else tool.render(directory, examples))


# ---------------------------------------------------------------- pretrain (stages/pretrain.py), plot (metrics.py)


@app.command("pretrain")
@report_errors
def pretrain(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help="A masked artifact (static masking) or a pairs artifact (dynamic masking)."
    ),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run directory (checkpoints, metrics)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output from its newest complete checkpoint."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over, replacing the run in --output."),
) -> None:
    """Pretrain BertForPreTraining (MLM + NSP); also under `torchrun --nproc_per_node N -m bertcli pretrain …`."""
    cfg = _stage_config("pretrain", config, set_, {"data": data, "output": output})
    from bertcli.stages import pretrain as stage  # torch: only once the config is known to be valid (seconds)

    manifest = stage.run(cfg, resume=resume, overwrite=overwrite)
    if manifest is not None:  # None on the other ranks under torchrun: rank 0 reports
        stats = manifest["stats"]
        acc = stats.get("eval_mlm_accuracy")
        typer.echo(
            f"wrote {Path(cfg.output) / 'final'}: {stats['steps']:,} steps, {stats['tokens']:,} tokens"
            + (f", held-out MLM accuracy {acc:.2%}" if acc is not None else "")
        )


@app.command("plot")
@report_errors
def plot(
    run: Path = typer.Argument(..., help="A run directory of `bert pretrain` (holding metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG to write (default RUN/metrics.png)."),
) -> None:
    """Draw the loss and accuracy curves of a pretraining run as a PNG."""
    from bertcli import metrics

    typer.echo(f"wrote {metrics.run(run, out)}")


# ---------------------------------------------------------------- use a trained model (bertcli/tools/predict.py)

ModelOpt = typer.Option(
    ..., "--model", "-m", help="A BertForPreTraining directory: a run (its final/ is used), run/final, or any HF BERT."
)
DeviceOpt = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N.")
BatchOpt = typer.Option(32, "--batch-size", min=1, help="Sequences per forward pass.")


@app.command("predict-nsp")
@report_errors
def predict_nsp(
    model: Path = ModelOpt,
    first: Optional[str] = typer.Option(None, "--first", help="Sentence A."),
    second: Optional[str] = typer.Option(None, "--second", help="Sentence B: does it follow A?"),
    input_: Optional[Path] = typer.Option(
        None, "--input", "-i", help='TSV (first<TAB>second) or JSONL ({"first":…,"second":…}) file; prints JSONL.'
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per pair."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
) -> None:
    """Next-sentence prediction: the probability that --second follows --first (IsNext), or for every pair of a file."""
    from bertcli.errors import InputError
    from bertcli.model_dir import load_model
    from bertcli.tools import predict as tool

    if input_ is not None and (first is not None or second is not None):
        raise InputError("give either --first and --second, or --input FILE, not both",
                         hint="one pair on the command line, or many in a file: drop the one you do not mean")
    pair = {"--first": first, "--second": second}
    missing = [name for name, text in pair.items() if text is None]
    if input_ is None and missing:
        raise InputError(
            f"predict-nsp needs --first TEXT and --second TEXT, or --input FILE ({' and '.join(missing)} not given)",
            hint='e.g. bert predict-nsp -m RUN --first "It rained." --second "The streets were wet."',
        )
    empty = [name for name, text in pair.items() if text is not None and not text.strip()]
    if input_ is None and empty:
        raise InputError(f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty",
                         hint="both sentences of a pair need text")
    loaded = load_model(model, device=device, need_nsp=True)
    if input_ is not None:  # JSON lines, streamed
        for row in tool.predict_nsp_file(loaded, input_, batch_size=batch_size):
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    (row,) = tool.predict_nsp(loaded, [(first, second)])
    typer.echo(json.dumps(row, ensure_ascii=False) if as_json else tool.format_nsp(row))


@app.command("fill-mask")
@report_errors
def fill_mask(
    text: str = typer.Argument(..., help="Text with one or more mask tokens, e.g. \"The cat [MASK] on the mat.\""),
    model: Path = ModelOpt,
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Predictions per mask."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: text and, per mask, its predictions."),
    device: str = DeviceOpt,
) -> None:
    """The top-k tokens and probabilities for every mask token in TEXT."""
    from bertcli.model_dir import load_model
    from bertcli.tools import predict as tool

    loaded = load_model(model, device=device, need_mlm=True)
    masks = tool.fill_mask(loaded, text, top_k=top_k)
    if as_json:
        typer.echo(json.dumps({"text": text, "masks": masks}, ensure_ascii=False))
    else:
        typer.echo(tool.format_fill_mask(masks, loaded.tokenizer.mask_token))


@app.command("evaluate")
@report_errors
def evaluate(
    model: Path = ModelOpt,
    data: Path = typer.Option(
        ..., "--data", "-d",
        help="A masked artifact (`bert mask`), or a pairs artifact, masked here as `bert pretrain` masks one "
        "(with pretrain's default masked_lm_prob and max_predictions_per_seq).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    batch_size: int = BatchOpt,
    max_sequences: Optional[int] = typer.Option(None, "--max-sequences", min=1, help="Evaluate only the first N."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**32 - 1, help="Seed of the masking of a pairs artifact (per chunk of 1,024 "
        "sequences: --batch-size changes nothing)."
    ),
    device: str = DeviceOpt,
) -> None:
    """MLM loss, accuracy on the masked positions, perplexity and NSP accuracy of a model on a data artifact, computed
    by the training code (the eval_* of `bert pretrain` on the same sequences and masks)."""
    from bertcli.model_dir import load_model
    from bertcli.tools import predict as tool

    loaded = load_model(model, device=device, need_mlm=True, need_nsp=True)
    metrics = tool.evaluate(
        loaded, data, batch_size=batch_size, max_sequences=max_sequences, progress=not as_json, seed=seed
    )
    typer.echo(json.dumps(metrics) if as_json else tool.format_metrics(metrics))


@app.command("embed")
@report_errors
def embed(
    sentences: List[str] = typer.Argument(..., help="Sentences that each contain the word."),
    model: Path = ModelOpt,
    word: str = typer.Option(..., "--word", "-w", help="The word to compare across the sentences (case ignored)."),
    layer: int = typer.Option(-1, "--layer", help="Hidden layer of the contextual vector (-1: last, 0: embeddings)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: pieces, vectors and both matrices."),
    device: str = DeviceOpt,
) -> None:
    """The word's contextual vector in each sentence and their cosine similarities, beside the static ones."""
    from bertcli.model_dir import load_model
    from bertcli.tools import predict as tool

    loaded = load_model(model, device=device)
    result = tool.embed(loaded, word, sentences, layer=layer)
    typer.echo(json.dumps(result, ensure_ascii=False) if as_json else tool.format_embedding(result))


@app.command("attention")
@report_errors
def attention(
    text: str = typer.Argument(..., help="The text to look at."),
    model: Path = ModelOpt,
    out: Path = typer.Option(Path("attention.html"), "--out", "-o", help="HTML file to write."),
    png: bool = typer.Option(False, "--png", help="Also write one heatmap PNG per layer (needs matplotlib)."),
    second: Optional[str] = typer.Option(None, "--second", help="A second segment, to see attention across a pair."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    device: str = DeviceOpt,
) -> None:
    """Every layer's and head's attention as a self-contained HTML page (open it in a browser; no network)."""
    from bertcli.tools import attention as tool

    result = tool.write_attention(model, text, out=out, second=second, png=png, overwrite=overwrite, device=device)
    shape = f"{result['layers']} layers × {result['heads']} heads, {len(result['tokens'])} tokens"
    typer.echo("\n".join([f"wrote {result['html']}: {shape}", *(f"wrote {path}" for path in result["png"])]))


@app.command("run")
@report_errors
def run_pipeline(
    file: Path = typer.Argument(..., help="Pipeline YAML, e.g. configs/pipeline/demo.yaml."),
    set_: Optional[List[str]] = SetOpt,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Rebuild artifacts that are stale (made with another config or input)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say which stages would run and which are up to date."),
) -> None:
    """Run train-vocab → pairs → mask → pretrain from one YAML; a stage whose artifact is up to date is skipped."""
    from bertcli.stages import pipeline as stage

    speaks = _rank() == 0  # under torchrun: rank 0 reports for the run
    plans = stage.run(file, set_ or [], overwrite=overwrite, dry_run=dry_run,
                      report=typer.echo if speaks else lambda line: None)
    model = stage.final_model(plans)
    if model is not None and not dry_run and speaks:
        from bertcli.tools.predict import fill_mask_example

        pairs = next((plan.cfg for plan in plans if plan.name == "pairs"), None)
        # A prompt from the corpus itself, so a Korean model is asked in Korean.
        prompt = fill_mask_example(pairs, pairs.tokenizer) if pairs is not None else None
        path = shlex.quote(str(model))
        typer.echo(f"model: {model}" + (f'   try: bert fill-mask --model {path} "{prompt}"' if prompt else
                                        f"   try: bert fill-mask --model {path} TEXT (a sentence with [MASK] in it)"))


# ---------------------------------------------------------------- finetune, predict (bertcli/stages/finetune.py,
# bertcli/tools/classify.py)


@app.command("finetune")
@report_errors
def finetune(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="BERT to start from: a `bert pretrain` run, run/final, or any HF BERT directory."
    ),
    train: Optional[str] = typer.Option(None, "--train", help="Labelled examples: .csv/.tsv with a header, or .jsonl."),
    dev: Optional[str] = typer.Option(None, "--dev", help="Dev examples (default: hold out dev_fraction of --train)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Directory to write the classifier to."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[int] = typer.Option(
        None, "--seeds", min=1, help="Runs with seeds seed, seed+1, …; the best is saved."
    ),
    overwrite: bool = OverwriteOpt,
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: median dev_accuracy, dev_macro_f1, dev_mcc, the seeds' results."
    ),
) -> None:
    """Fine-tune a BERT for sequence or sentence-pair classification on a CSV, TSV or JSONL file.

    The output loads with AutoModelForSequenceClassification and pipeline("text-classification").
    """
    from bertcli.config import load_config
    from bertcli.schemas import FinetuneConfig
    from bertcli.stages import finetune as stage

    cli_values = {"model": model, "train": train, "dev": dev, "output": output, "seeds": seeds}
    cfg = load_config(FinetuneConfig, config, set_ or [], cli_values)
    stats = stage.run(cfg, overwrite=overwrite)["stats"]
    if as_json:
        keys = ("dev_accuracy", "dev_macro_f1", "dev_mcc", "best_seed", "metric", "seeds", "labels")
        typer.echo(json.dumps({"output": cfg.output, **{k: stats[k] for k in keys}}, ensure_ascii=False))
        return
    n = len(stats["seeds"])
    typer.echo(
        f"dev accuracy {stats['dev_accuracy']:.4f}, macro-F1 {stats['dev_macro_f1']:.4f}, "
        f"MCC {stats['dev_mcc']:.4f}" + (f" (medians over {n} seeds)" if n > 1 else "")
    )
    typer.echo(
        f"wrote {cfg.output}: the model of seed {stats['best_seed']}"
        + (f", the best of {n} by dev {stats['metric']}" if n > 1 else "")
        + (f"; try: bert predict --model {cfg.output} --input FILE (fields {cfg.text_field or 'sentence/text'} and "
           f"{cfg.text_pair_field})" if cfg.text_pair_field else f"; try: bert predict --model {cfg.output} \"TEXT\"")
    )


@app.command("predict")
@report_errors
def predict(
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to classify."),
    model: Path = typer.Option(
        ..., "--model", "-m", help="A sequence classifier: the output of `bert finetune`, or any HF one."
    ),
    input_: Optional[Path] = typer.Option(
        None, "--input", "-i", help="CSV/TSV/JSONL file as for `bert finetune --train` (its label column is ignored), "
        "or a .txt file of one text a line."
    ),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="The --input column or key of the text (default: the one fine-tuned on)."
    ),
    text_pair_field: Optional[str] = typer.Option(
        None, "--text-pair-field", help="The --input column or key of a pair's second text (default: as fine-tuned)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input: label, probability, probabilities."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N."),
) -> None:
    """The label and its probability for each TEXT, or for every example of --input FILE."""
    from bertcli.errors import InputError
    from bertcli.tools import classify as tool

    if (input_ is None) == (not texts):
        raise InputError("give texts as arguments or --input FILE" + (", not both" if input_ is not None else ""),
                         hint='e.g. bert predict --model runs/finetune "The cat sat on the mat."')
    if input_ is None and (text_field or text_pair_field):
        raise InputError("--text-field and --text-pair-field name the fields of an --input file",
                         hint="give the file with --input FILE")
    clf = tool.load_classifier(model, device=device)
    if input_ is not None:
        rows = tool.classify_file(clf, input_, batch_size, text_field, text_pair_field)
    else:
        rows = tool.classify_arguments(clf, list(texts or []), batch_size=batch_size)
    for row in rows:
        typer.echo(json.dumps(row, ensure_ascii=False) if as_json else tool.format_result(row))


# ---------------------------------------------------------------- score (bertcli/tools/score.py)


@app.command("score")
@report_errors
def score(
    texts: Optional[List[str]] = typer.Argument(None, help="Sentences to score."),
    model: Path = typer.Option(
        ..., "--model", "-m", help="A BERT with its MLM head: a `bert pretrain` run (its final/), run/final, or any HF "
        "BertForMaskedLM / BertForPreTraining directory."
    ),
    input_: Optional[Path] = typer.Option(
        None, "--input", "-i", help="Text file, one sentence a line; or a .csv, .tsv or .jsonl file (its text field)."
    ),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="The --input column or key of the text (default: sentence, else text)."
    ),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="Minimal pairs as JSON lines in BLiMP's format (sentence_good, sentence_bad)."
    ),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", help="Field that groups --pairs (default: UID, else linguistics_term, else field)."
    ),
    variant: str = typer.Option(
        "original", "--variant", help="original (Salazar et al. 2020) or word_l2r (Kauf & Ivanova 2023)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per text (pll, pseudo_perplexity); with --pairs one per pair, then a "
        "summary (accuracy, pairs, groups, per_group) as the last line."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Masked copies per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N."),
) -> None:
    """Pseudo-log-likelihood and pseudo-perplexity of sentences; minimal-pair accuracy with --pairs.

    --pairs: the share of pairs whose good sentence scores higher (ties count half), per group and their mean.
    """
    from bertcli.errors import InputError
    from bertcli.model_dir import load_model
    from bertcli.pll import VARIANTS
    from bertcli.tools import score as tool

    if variant not in VARIANTS:
        raise InputError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}",
                         hint="original scores each piece alone; word_l2r also masks the rest of its word")
    given = [name for name, value in (("TEXT", texts), ("--input", input_), ("--pairs", pairs)) if value]
    if len(given) != 1:
        raise InputError(
            "give sentences as TEXT arguments, or --input FILE, or --pairs FILE"
            + (f", not {' and '.join(given)}" if given else ""),
            hint='e.g. bert score --model runs/run "The cat sat on the mat."',
        )
    if text_field is not None and input_ is None:
        raise InputError("--text-field names a field of an --input file", hint="give the file with --input FILE")
    if group_by is not None and pairs is None:
        raise InputError("--group-by applies to --pairs only",
                         hint="drop --group-by, or give the pairs with --pairs FILE")
    if pairs is not None:
        tool.read_minimal_pairs(pairs, group_by)  # a bad file fails before the model is loaded
        loaded = load_model(model, device=device, need_mlm=True)
        rows, summary = tool.score_pairs(loaded, pairs, group_by, variant, batch_size)
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row, ensure_ascii=False))
            typer.echo(json.dumps(summary, ensure_ascii=False))
            return
        for group, result in summary["per_group"].items():
            typer.echo(f"{result['accuracy']:7.2%}  {result['pairs']:6,} pairs  {group}")
        typer.echo(
            f"{summary['accuracy']:7.2%}  {summary['pairs']:6,} pairs  mean over {summary['groups']} group(s) "
            f"(by {summary['group_by'] or 'nothing: one group'}; variant {variant})"
        )
        return
    if input_ is not None:
        from bertcli.textio import check_regular_file

        check_regular_file(input_, "input file ", "pass a text file (one sentence a line) or a .csv/.tsv/.jsonl")
    loaded = load_model(model, device=device, need_mlm=True)
    rows = (tool.score_file(loaded, input_, variant, batch_size, text_field=text_field) if input_ is not None
            else tool.score_texts(loaded, list(texts or []), variant, batch_size))
    for i, row in enumerate(rows):
        if i == 0 and not as_json:  # which number is which; with the first row, after a file's lines are checked
            typer.echo(f"{'pll':>10}  {'pseudo-ppl':>10}  text")
        typer.echo(json.dumps(row, ensure_ascii=False) if as_json
                   else f"{row['pll']:10.3f}  {row['pseudo_perplexity']:10.2f}  {row['text']}")


def _stop_requested(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: `bert …` and `python -m bertcli …`."""
    # SIGTERM (a scheduler's or torchrun's stop) takes Ctrl-C's path: temporaries removed, the resumable checkpoint
    # named, exit 130.
    signal.signal(signal.SIGTERM, _stop_requested)
    try:  # typer ≥ 0.26 carries its own copy of Click
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `bert` or `bert config` alone: the help, as asked
        typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = 0
    except click_errors.UsageError as exc:
        # An option Click itself rejects (out of range, unknown, missing) is one line, like every other refusal,
        # not a usage box; the hint names the command's help.
        command = exc.ctx.command_path if exc.ctx else "bert"
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        typer.echo(f"hint: see {command} --help", err=True)
        code = 2
    except typer.Abort:  # Ctrl-C outside a command (a command handles its own: exit 130); typer's public name
        # (typer 0.27.2 took Abort out of the Click copy it carries)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)

"""The `bert` command line: each command parses, calls one stage function and reports."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from bertcli import __version__
from bertcli.errors import BertcliError

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


def report_errors(func: Callable) -> Callable:
    """Typed errors become `error: …` + a hint and exit code 2; anything else exit code 1, one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BertcliError as exc:
            if _debug():
                traceback.print_exc()
            typer.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                typer.echo(f"hint: {exc.hint}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: no finished output was written for this run", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if _debug():
                traceback.print_exc()
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


# ---------------------------------------------------------------- config


@config_app.command("show")
@report_errors
def config_show(
    stage: str = typer.Argument(..., help="Stage name: train-vocab, pairs, mask, pretrain or run."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    docs: bool = typer.Option(False, "--docs", help="Write each field's documentation as a comment above it."),
) -> None:
    """Print the effective config of STAGE as YAML (defaults ← --config ← --set)."""
    from bertcli.config import config_to_yaml, load_config
    from bertcli.errors import ConfigError
    from bertcli.schemas import STAGE_SCHEMAS

    if stage not in STAGE_SCHEMAS:
        raise ConfigError(f"unknown stage '{stage}'", hint=f"choose one of {', '.join(STAGE_SCHEMAS)}")
    cfg = load_config(STAGE_SCHEMAS[stage], config, set_ or [], validate=False)
    typer.echo(config_to_yaml(cfg, comments=docs), nl=False)


# ---------------------------------------------------------------- train-vocab, tokenize


@app.command("train-vocab")
@report_errors
def train_vocab(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    input_: Optional[List[str]] = typer.Option(None, "--input", "-i", help="Corpus file, directory or glob (repeatable)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Tokenizer directory to write."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a WordPiece vocabulary; the directory loads with AutoTokenizer.from_pretrained."""
    from bertcli.config import load_config
    from bertcli.schemas import TrainVocabConfig
    from bertcli.stages import train_vocab as stage

    cfg = load_config(TrainVocabConfig, config, set_ or [], {"input": input_, "output": output})
    manifest = stage.run(cfg, overwrite=overwrite)
    stats = manifest["stats"]
    typer.echo(
        f"wrote {cfg.output}: {stats['vocab_size']} tokens ({manifest['algorithm']}), "
        f"{stats['sentences']:,} sentences in {stats['documents']:,} documents read"
    )


@app.command("tokenize")
@report_errors
def tokenize(
    texts: List[str] = typer.Argument(..., help="Text(s) to tokenize."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="Tokenizer directory."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text: text, tokens, ids."),
) -> None:
    """Print the WordPiece pieces and ids of each TEXT ([CLS] and [SEP] included, as AutoTokenizer gives them)."""
    from bertcli.stages.train_vocab import tokenize as run_tokenize

    for row in run_tokenize(tokenizer, texts):
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
        else:
            typer.echo(" ".join(row["tokens"]))
            typer.echo(" ".join(str(i) for i in row["ids"]))


def main() -> None:
    """Console entry point: `bert …` and `python -m bertcli …`."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        # Click reports usage errors itself with exit code 2; keep that.
        sys.exit(code)

"""The typed errors a user can see; cli.main() turns each into one line, a hint and exit code 2."""

from __future__ import annotations

import sys


class BertcliError(Exception):
    """A problem with the user's input, config or files: reported without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(BertcliError):
    """A YAML file, key or value that does not fit the stage's schema."""


class InputError(BertcliError):
    """A corpus or input file whose content cannot be used (names file and line)."""


class ArtifactError(BertcliError):
    """An artifact directory that is missing, unfinished, or made for something else."""


class OutputExistsError(BertcliError):
    """The output path exists and --overwrite was not given (or cannot be safely replaced)."""


class ExecutorError(BertcliError):
    """A task its executor could not run: a Ray worker or node that died on every retry, a cluster that went away."""


def one_line(exc: BaseException) -> str:
    """A library's exception text as one line, for a message that must stay one line."""
    return " ".join(str(exc).split())


def warn(message: str) -> None:
    """A warning on stderr that does not stop the command (e.g. text truncated)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)

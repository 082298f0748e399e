"""The typed errors a user can see, and what a failure of the machine (disk full, permissions) means for them;
cli.main() turns each into one line, a hint and exit code 2."""

from __future__ import annotations

import errno
import sys


class BertcliError(Exception):
    """A problem with the user's input, config or files: reported without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.relayed = False  # raised on this rank because rank 0 raised it (dist.main_decides): rank 0 reports it

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


_ERRNO_HINTS = {
    errno.ENOSPC: "free some space on that disk, or write elsewhere (--output)",
    errno.EDQUOT: "free some space (your disk quota is used up), or write elsewhere (--output)",
    errno.EROFS: "the file system is read-only: choose an --output on a writable one",
    errno.EACCES: "you may not write or read there: fix the permissions, or choose another path",
    errno.EPERM: "you may not write or read there: fix the permissions, or choose another path",
    errno.ENOTDIR: "a file stands where a directory is needed: choose another path",
    errno.EISDIR: "a directory stands where a file is needed: choose another path",
    errno.EEXIST: "something already exists at that path: choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.ENOENT: "a directory on the way is missing: check the path",
}
# Libraries that wrap a failed write in their own error type say so in their text.
_DISK_FULL_WORDS = ("No space left", "StorageFull", "os error 28", "PytorchStreamWriter failed", "inline_container")


def environment_problem(exc: BaseException) -> tuple[str, str] | None:
    """(message, hint) when the failure is the machine's state (disk full, read-only, permissions), else None."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_HINTS:
        where = f" '{exc.filename}'" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}", _ERRNO_HINTS[exc.errno]
    text = str(exc)
    if any(word in text for word in _DISK_FULL_WORDS):
        return (f"a file could not be written ({' '.join(text.split())[:160]})",
                "the disk is probably full: free some space, or write elsewhere (--output)")
    return None

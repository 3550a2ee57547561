"""Errors of the command line: one red line for user mistakes (exit 2), a short note for bugs (exit 1).

Commands run inside :func:`handle_errors`. A :class:`UserError` (a wrong name, a missing
file, a bad value, no internet for a download, a file that cannot be written) prints
``error: <message>`` on stderr and exits with code 2; any other exception is an internal
error: exit code 1 and a line asking to re-run with ``--debug``, which prints the full
traceback instead. Python warnings are shown as one yellow ``warning:`` line each.
Messages written for the Python API are put in command-line words (:func:`cli_words`).
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import sys
import urllib.error
import warnings

import click
import typer

__all__ = ["EXIT_INTERNAL", "EXIT_USER", "UserError", "cli_words", "handle_errors", "is_offline_error",
           "user_errors"]

EXIT_USER = 2
EXIT_INTERNAL = 1

_OFFLINE_NAMES = {
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "NewConnectionError",
    "NameResolutionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ProxyError", "SSLError",
}


class UserError(Exception):
    """A mistake the user can fix; the message says what was wrong and what is allowed."""


#: Python-API phrases in library messages and the command-line words for them.
_CLI_WORDS = (
    (re.compile(r"^(create_model|load|save|summarize|bake|export_onnx|save_baked|get_dataset|fit): "), ""),
    (re.compile(r"\(njetify\.list_models\(\) lists them all\)"), "('njetify models PATTERN' lists them)"),
    (re.compile(r"\(see njetify\.list_models\(\)\)"), "(see 'njetify models PATTERN')"),
    (re.compile(r"give calibration_data"), "use --calibrate DATASET"),
    (re.compile(r"recipe max_fit_error"), "--max-fit-error"),
    (re.compile(r"raise the recipe's max_fit_error, or set it to null"), "raise --max-fit-error, or set it to none"),
    (re.compile(r"pass download=True"), "pass --download"),
    (re.compile(r"download=True"), "--download"),
    (re.compile(r"data_dir / \$NJETIFY_DATA"), "--data-dir / $NJETIFY_DATA"),
    (re.compile(r"data_dir="), "--data-dir "),
    (re.compile(r"with val_split \(e\.g\. 0\.1\)"), "with --val-split 0.1"),
    (re.compile(r"pretrained=True"), "--pretrained"),
    (re.compile(r"pretrained=False"), "no --pretrained"),
    (re.compile(r"weights=PATH"), "--weights PATH"),
    (re.compile(r"num_classes=(\d+)"), r"--num-classes \1"),
    (re.compile(r"in_chans=(\d+)"), r"--in-chans \1"),
)


def cli_words(message: str) -> str:
    """``message`` with Python-API phrases replaced by their command-line equivalents."""
    for pattern, repl in _CLI_WORDS:
        message = pattern.sub(repl, message)
    return message


def stderr_console():
    """A rich console on stderr (created per call, so test runners can capture it)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=False)


def is_offline_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) means "no network"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (urllib.error.URLError, socket.gaierror, socket.timeout, ConnectionError)):
            return True
        if any(t.__name__ in _OFFLINE_NAMES for t in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def user_errors(*types: type[BaseException], what: str | None = None):
    """Turn exceptions of ``types`` (default ValueError, TypeError, FileNotFoundError, KeyError)
    raised inside the block into :class:`UserError` (prefixed by ``what``)."""
    types = types or (ValueError, TypeError, FileNotFoundError, IsADirectoryError, KeyError)
    try:
        yield
    except UserError:
        raise
    except types as e:
        if is_offline_error(e):
            raise
        msg = cli_words(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
        raise UserError(f"{what}: {msg}" if what else msg) from e


def _offline_message(exc: BaseException) -> str:
    cause, seen = exc, set()
    while cause is not None and id(cause) not in seen:  # a message written for this case says it best
        if type(cause).__name__ == "OfflineError":
            return "no internet connection: " + str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return (
        "no internet connection: a download was needed and failed "
        f"({type(exc).__name__}). Give local files instead (--weights PATH for a model, "
        "--data-dir DIR with the data set's files) or run where the network is reachable."
    )


def _print_error(message: str, debug: bool) -> None:
    from rich.text import Text

    con = stderr_console()
    if debug:
        con.print_exception(show_locals=False)
    con.print(Text("error: " + cli_words(message), style="bold red"))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from rich.text import Text

    stderr_console().print(Text(f"warning: {cli_words(str(message))}", style="yellow"))


def os_error_message(e: OSError) -> str | None:
    """A one-line message for an OSError about a file the user named (None when it is not one)."""
    name = e.filename or ""
    if not name and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return None
    reason = e.strerror or type(e).__name__
    hints = {
        errno.EACCES: "no permission: choose a folder you can write to",
        errno.EPERM: "no permission: choose a folder you can write to",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.ENOSPC: "the disk is full: free some space or choose another folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a file of that name is in the way of a folder",
        errno.EISDIR: "that is a folder; give a file name",
    }
    hint = hints.get(e.errno)
    return f"cannot use {str(name)!r}: {reason}" + (f" ({hint})" if hint else "")


@contextlib.contextmanager
def handle_errors(debug: bool = False):
    """Run a command body: map exceptions to exit codes 2 (user) / 1 (internal), warnings to one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            yield
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except UserError as e:
            _print_error(str(e), debug)
            raise typer.Exit(EXIT_USER) from None
        except KeyboardInterrupt:
            stderr_console().print("[red]interrupted[/] (nothing was saved by this command)")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence of a command
            if is_offline_error(e):
                _print_error(_offline_message(e), debug)
                raise typer.Exit(EXIT_USER) from None
            text = os_error_message(e) if isinstance(e, OSError) else None
            if text is not None:  # a file the user named cannot be read or written
                _print_error(text, debug)
                raise typer.Exit(EXIT_USER) from None
            text = f"internal error: {type(e).__name__}: {e}"
            if not debug:
                text += " (run again with --debug for the traceback, and please report it)"
            _print_error(text, debug)
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            sys.stderr.flush()

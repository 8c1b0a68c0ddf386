"""Shared helpers for the click CLIs: library errors become one line and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import click

from .errors import MtadError

EXIT_USAGE = 2
EXIT_ERROR = 1


def report_errors(fn):
    """Turn :class:`MtadError` and common OS errors into ``error: ...`` and exit 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # e.g. `mtad-edge ... | head`: the reader left, nothing to report
            sys.stderr.close()
            sys.exit(0)
        except MtadError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except OSError as exc:  # full disk, permissions, missing paths outside our checks
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]

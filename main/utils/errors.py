"""One-line errors for mistakes a user can fix, and the entry-point wrapper that prints them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint) that names the fix.

    Entry points print these as one line and exit with status 2 instead of a traceback.
    """


def exit_on_user_error(fn: F) -> F:
    """Decorate an entry point so a `UserError` (also when raised inside Hydra) prints one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]

"""argparse ``type=`` checks shared by the commands: a bad value stops at parsing, before any work."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["integer_at_least"]


def integer_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low`` (argparse then reports ``argument --x: expected ...``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse

"""One error type for everything a user can get wrong, and the wrapper that turns it into one line.

Stage scripts call `run_cli(main)`: a PeftlabError prints `error: <message>` on stderr and exits 2,
with no traceback, because the message already names the bad value and what is allowed.
"""
from __future__ import annotations

import sys
from typing import Callable


class PeftlabError(Exception):
    """A problem with the user's params, data or sources, explained in one line."""


def run_cli(main: Callable[[], object]) -> None:
    try:
        main()
    except PeftlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)

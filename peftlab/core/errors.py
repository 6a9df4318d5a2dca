"""One error type for everything a user can get wrong, and the wrapper that turns it into one line.

Stage scripts call `run_cli(main)`: a PeftlabError prints `error: <message>` on stderr and exits 2,
with no traceback, because the message already names the bad value and what is allowed.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import yaml


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


def bad_param(key: str, value: Any, allowed: str) -> PeftlabError:
    """The one wording of a refused param: `params.yaml: <key> = <value> is invalid; allowed: <what>`."""
    shown = repr(value) if isinstance(value, str) else \
        yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return PeftlabError(f"params.yaml: {key} = {shown} is invalid; allowed: {allowed}")

"""JSON from an untrusted uploader, parsed within limits.

Python's ``json`` recurses once per nesting level, so a 60 KB document of ``[[[[...`` ends
in ``RecursionError`` inside the handler instead of a clear refusal; it also accepts
``NaN`` and ``Infinity``, which are not JSON and poison every comparison they reach. The
nesting is measured before parsing (a linear scan that skips string contents), and the
non-finite constants are refused by name.
"""

from __future__ import annotations

import json

MAX_DEPTH = 16


class ConfigJSONError(ValueError):
    """The document is not acceptable JSON; the message says why."""


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting outside strings (malformed input still gets a number)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _refuse_constant(name: str):
    raise ConfigJSONError(f"{name} is not a JSON number; use a finite number")


def loads(data: bytes | str, what: str, max_depth: int = MAX_DEPTH):
    """Parse ``data`` (named ``what`` in errors) or raise ``ConfigJSONError``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise ConfigJSONError(f"{what} is not UTF-8 text ({exc.reason})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ConfigJSONError(f"{what} nests {depth} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ConfigJSONError as exc:
        raise ConfigJSONError(f"{what}: {exc}") from None
    except ValueError as exc:
        raise ConfigJSONError(f"{what} is not valid JSON: {exc}") from None

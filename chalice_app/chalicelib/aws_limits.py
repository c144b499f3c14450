"""Constraints the SageMaker API reference states that botocore's shapes do not carry.

botocore checks types, required members and some lengths; the service also checks these,
and a request that breaks one fails only when it reaches AWS. The request builders keep
to them (sanitising what comes from a user, like a dataset's key in a tag) and the local
SageMaker refuses what breaks them, as the service would.
"""

from __future__ import annotations

import unicodedata

# Tag: Key 1-128, Value 0-256 characters, both ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
# ParameterRanges: at most 30 ranges over all three types together; a categorical range
# has at most 30 values; a ReverseLogarithmic range lies within [0, 1).
MAX_PARAMETER_RANGES = 30
MAX_CATEGORICAL_VALUES = 30


def tag_character_allowed(char: str) -> bool:
    """\\p{L}, \\p{Z}, \\p{N} or one of ``_.:/=+-@``."""
    return char in _TAG_PUNCTUATION or unicodedata.category(char)[0] in "LZN"


def tag_value(text: str) -> str:
    """``text`` as a valid tag value: other characters become ``_``, cut to 256."""
    return "".join(c if tag_character_allowed(c) else "_" for c in text)[:TAG_VALUE_MAX]


def tag_problem(tag: dict) -> str | None:
    """Why SageMaker would refuse ``{"Key", "Value"}``, or None."""
    key, value = tag.get("Key", ""), tag.get("Value", "")
    if not 1 <= len(key) <= TAG_KEY_MAX or not all(map(tag_character_allowed, key)):
        return f"tag key {key!r} must be 1-{TAG_KEY_MAX} letters, digits, spaces or _.:/=+-@"
    if len(value) > TAG_VALUE_MAX or not all(map(tag_character_allowed, value)):
        return (
            f"tag value {value!r} of {key!r} must be at most {TAG_VALUE_MAX} letters, digits, "
            "spaces or _.:/=+-@"
        )
    return None


def parameter_ranges_problem(strategy: str, ranges: dict) -> str | None:
    """Why SageMaker would refuse these ``ParameterRanges`` for ``strategy``, or None."""
    count = sum(len(ranges.get(kind, [])) for kind in ranges)
    if count > MAX_PARAMETER_RANGES:
        return f"{count} parameter ranges; SageMaker allows at most {MAX_PARAMETER_RANGES}"
    numeric = [
        spec["Name"]
        for kind in ("ContinuousParameterRanges", "IntegerParameterRanges")
        for spec in ranges.get(kind, [])
    ]
    if strategy == "Grid" and numeric:
        return (
            f"Grid search only supports categorical parameter ranges; {', '.join(numeric)} "
            "are not (give them a list of values, or use another strategy)"
        )
    for spec in ranges.get("CategoricalParameterRanges", []):
        if len(spec["Values"]) > MAX_CATEGORICAL_VALUES:
            return (
                f"categorical range {spec['Name']} has {len(spec['Values'])} values; "
                f"at most {MAX_CATEGORICAL_VALUES}"
            )
    for spec in ranges.get("ContinuousParameterRanges", []):
        if spec.get("ScalingType") == "ReverseLogarithmic" and not (
            float(spec["MinValue"]) >= 0 and float(spec["MaxValue"]) < 1
        ):
            return (
                f"ReverseLogarithmic range {spec['Name']} must lie within [0, 1), not "
                f"[{spec['MinValue']}, {spec['MaxValue']}]"
            )
    return None

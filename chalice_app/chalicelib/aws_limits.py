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


def parameter_ranges(ranges: dict) -> dict:
    """sagedrop's compact range spec → SageMaker's ``ParameterRanges``."""
    out: dict[str, list] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for name, spec in sorted(ranges.items()):
        if spec["type"] == "categorical":
            values = [str(v) for v in spec["values"]]
            out["CategoricalParameterRanges"].append({"Name": name, "Values": values})
            continue
        cast = int if spec["type"] == "integer" else float
        key = "IntegerParameterRanges" if spec["type"] == "integer" else "ContinuousParameterRanges"
        out[key].append(
            {
                "Name": name,
                "MinValue": str(cast(spec["min"])),
                "MaxValue": str(cast(spec["max"])),
                "ScalingType": spec.get("scaling", "Auto"),
            }
        )
    return out


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


# Model Registry: ModelPackageDescription and ApprovalDescription are at most 1,024
# characters of [\p{L}\p{M}\p{Z}\p{S}\p{N}\p{P}]* (no control characters, so no newlines);
# CustomerMetadataProperties hold at most 50 entries, keys 1-128 and values 1-256
# characters of the tag pattern.
DESCRIPTION_MAX = 1024
METADATA_ENTRIES_MAX = 50
METADATA_KEY_MAX = 128
METADATA_VALUE_MAX = 256
# ProductionVariantServerlessConfig: MemorySizeInMB in 1 GB steps from 1024 to 6144;
# MaxConcurrency and ProvisionedConcurrency 1-200 (provisioned <= max).
SERVERLESS_MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_CONCURRENCY_MAX = 200


def description(text: str) -> str:
    """``text`` as a valid description: whitespace runs become one space, other control
    characters are dropped, and a cut text ends in an ellipsis."""
    flat = " ".join(text.split())
    kept = "".join(c for c in flat if unicodedata.category(c)[0] in "LMZSNP")
    return kept if len(kept) <= DESCRIPTION_MAX else kept[: DESCRIPTION_MAX - 1] + "…"


def description_problem(what: str, text: str) -> str | None:
    if len(text) > DESCRIPTION_MAX:
        return f"{what} is {len(text)} characters; at most {DESCRIPTION_MAX}"
    bad = sorted({c for c in text if unicodedata.category(c)[0] not in "LMZSNP"})
    if bad:
        return f"{what} holds characters SageMaker refuses: {', '.join(map(repr, bad))}"
    return None


def metadata_problem(properties: dict) -> str | None:
    """Why SageMaker would refuse these ``CustomerMetadataProperties``, or None."""
    if len(properties) > METADATA_ENTRIES_MAX:
        return f"{len(properties)} metadata properties; at most {METADATA_ENTRIES_MAX}"
    for key, value in properties.items():
        for text, limit in ((key, METADATA_KEY_MAX), (value, METADATA_VALUE_MAX)):
            if not 1 <= len(text) <= limit or not all(map(tag_character_allowed, text)):
                return (
                    f"metadata property {key!r}: keys (1-{METADATA_KEY_MAX}) and values "
                    f"(1-{METADATA_VALUE_MAX}) are letters, digits, spaces or _.:/=+-@"
                )
    return None


def serverless_problem(config: dict) -> str | None:
    """Why SageMaker would refuse this ``ServerlessConfig``, or None."""
    memory = config.get("MemorySizeInMB")
    if memory not in SERVERLESS_MEMORY_SIZES:
        sizes = ", ".join(map(str, SERVERLESS_MEMORY_SIZES))
        return f"serverless MemorySizeInMB must be one of {sizes}, not {memory!r}"
    most = config.get("MaxConcurrency")
    if not isinstance(most, int) or not 1 <= most <= SERVERLESS_CONCURRENCY_MAX:
        return (
            f"serverless MaxConcurrency must be between 1 and {SERVERLESS_CONCURRENCY_MAX}, "
            f"not {most!r}"
        )
    provisioned = config.get("ProvisionedConcurrency")
    if provisioned is not None and not (isinstance(provisioned, int) and 1 <= provisioned <= most):
        return f"serverless ProvisionedConcurrency must be between 1 and MaxConcurrency ({most})"
    return None

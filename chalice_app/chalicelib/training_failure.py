"""A training job's FailureReason, read the way a person wants it.

SageMaker's PyTorch image runs ``train.py`` through its training toolkit, and the toolkit
writes the FailureReason itself when the script exits non-zero::

    AlgorithmError: ExecuteUserScriptError:
    ExitCode 2
    ErrorMessage "ValueError: 'lr' must be a number in (0, 10], not 'fast'"
    Command "/usr/local/bin/python3.12 -- train.py --backbone resnet18 --lr fast ..."

The message is what ``train.py`` said (its last line on stderr); the command is every
hyperparameter again. ``summary`` keeps the exit code and the message, so a notice leads
with why the job failed; the full reason still travels as ``failure_reason``.
"""

from __future__ import annotations

import re

# SageMaker cuts a FailureReason at 1,024 characters: the closing quote may be gone.
_TOOLKIT_FORMAT = re.compile(
    r'(?P<error>\w+Error):\s*ExitCode (?P<code>-?\d+)\s*ErrorMessage "(?P<message>.*?)'
    r'(?:"\s*(?:ExtraInfo "(?P<info>.*?)"\s*)?(?:Command "|\Z)|\Z)',
    re.DOTALL,
)
_MAX_SUMMARY = 600


def summary(reason: str) -> str:
    """``"exit code 2: ValueError: ..."`` for the toolkit's format; other reasons as given."""
    match = _TOOLKIT_FORMAT.search(reason)
    if not match:
        return reason
    message = " ".join(match["message"].split()) or "the script printed no error"
    text = f"exit code {match['code']}: {message}"
    if match["info"]:
        text += f" ({match['info']})"
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 1] + "…"

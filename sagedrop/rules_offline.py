"""``sagedrop rules evaluate PATH``: a debug job's rules, judged again from its trace.

The trace (``debug_trace.jsonl``) holds every record the job's rules saw, in order, and
the job's rule configuration; replaying it through the same rule classes gives the same
verdicts, or new ones with other parameters (``--rules``), without re-training.
"""

from __future__ import annotations

import json
from pathlib import Path

from offline_api import (  # training_code/'s public module
    ISSUES,
    Verdict,
    evaluate_records,
    parse_rules_config,
    read_trace,
    render_debug_report,
)


def find_trace(path: str, root: str) -> Path:
    """A trace file, a folder or output.tar.gz holding one, or a local job's name."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    job = Path(root) / "jobs" / path / "output" / "data"
    if job.is_dir():
        return job
    raise FileNotFoundError(
        f"{path} is neither a file or folder nor a job under {Path(root) / 'jobs'}"
    )


def evaluate(path: str, root: str, rules: str | None = None) -> tuple[list[dict], list[Verdict]]:
    records = read_trace(find_trace(path, root))
    config = parse_rules_config(rules) if rules else None
    return records, evaluate_records(records, config)


def write_report(records: list[dict], verdicts: list[Verdict], out: str) -> Path:
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_debug_report(records, verdicts, str(meta.get("job", "job"))))
    return target


def print_verdicts(verdicts: list[Verdict], as_json: bool) -> None:
    if as_json:
        print(json.dumps([v.as_record() for v in verdicts], indent=2))
        return
    width = max(len(v.rule) for v in verdicts)
    for verdict in verdicts:
        print(f"{verdict.rule:<{width}}  {verdict.status:<13}  {verdict.details}")
        if verdict.status == ISSUES and verdict.advice:
            print(f"{'':<{width}}  {'':<13}  advice: {verdict.advice}")

"""SNS for one machine: each message is a line on the console and a line in a JSONL file.

The console line is what a person watching ``sagedrop up`` reads; the file
(``<root>/notifications/<topic>.jsonl``) is what ``sagedrop status`` and the tests read.
A message whose ``sagedrop.notice_id`` attribute the topic has already had is not written
again: a handler re-run after a crash announces each notice once (a subscriber of a real,
standard SNS topic does the same with that attribute).
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from chalicelib.notify import MESSAGE_LIMIT, NOTICE_ID_ATTRIBUTE, parse_message
from sagedrop.local.aws_shapes import client_error, iso, metadata, validate


class LocalSNS:
    def __init__(self, root: Path, say: Callable[[str], None] | None = None):
        self.folder = Path(root) / "notifications"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.say = say or (lambda line: print(line, file=sys.stdout, flush=True))
        self._lock = threading.Lock()
        self._seen: dict[str, dict[str, str]] = {}  # topic file -> notice id -> MessageId

    def topic_file(self, topic_arn: str) -> Path:
        return self.folder / f"{topic_arn.rsplit(':', 1)[-1]}.jsonl"

    def publish(self, **params) -> dict:
        validate("sns", "publish", params)
        topic = params.get("TopicArn")
        if not topic or not topic.startswith("arn:aws:sns:"):
            raise client_error("Publish", "InvalidParameter", "Invalid parameter: TopicArn")
        if len(params["Message"].encode()) > MESSAGE_LIMIT:
            raise client_error(
                "Publish",
                "InvalidParameter",
                "Invalid parameter: Message too long",
            )
        message_id = str(uuid.uuid4())
        attributes = params.get("MessageAttributes", {})
        notice = attributes.get(NOTICE_ID_ATTRIBUTE, {}).get("StringValue")
        record = {
            "MessageId": message_id,
            "Timestamp": iso(),
            "TopicArn": topic,
            "Subject": params.get("Subject", ""),
            "Message": params["Message"],
            "MessageAttributes": attributes,
            "event": _event_part(params["Message"]),
        }
        path = self.topic_file(topic)
        with self._lock:
            seen = self._seen_in(path)
            if notice and notice in seen:
                return {**metadata(), "MessageId": seen[notice]}
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if notice:
                seen[notice] = message_id
        first_line = (params["Message"].splitlines() or [""])[0]
        self.say(f"[sns] {record['Subject']} | {first_line}" if record["Subject"] else first_line)
        return {**metadata(), "MessageId": message_id}

    def _seen_in(self, path: Path) -> dict[str, str]:
        """The notice ids this topic's file holds, read once per process (the file is the
        record; ``sagedrop up`` is its only writer)."""
        if str(path) not in self._seen:
            if path.exists() and path.stat().st_size:
                with open(path, "rb+") as handle:
                    handle.seek(-1, 2)
                    if handle.read(1) != b"\n":  # a line cut short by a kill: end it
                        handle.write(b"\n")
            self._seen[str(path)] = {
                notice: record["MessageId"]
                for record in read_notifications(path)
                if (notice := _notice_id(record))
            }
        return self._seen[str(path)]


def _notice_id(record: dict) -> str | None:
    attribute = record.get("MessageAttributes", {}).get(NOTICE_ID_ATTRIBUTE, {})
    return attribute.get("StringValue")


def _event_part(message: str) -> dict:
    try:
        return parse_message(message)
    except (IndexError, ValueError):
        return {}  # a message someone else published, without sagedrop's JSON part


def read_notifications(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill -9 mid-write: that notice never went out
    return records

"""SNS for one machine: each message is a line on the console and a line in a JSONL file.

The console line is what a person watching ``sagedrop up`` reads; the file
(``<root>/notifications/<topic>.jsonl``) is what ``sagedrop status`` and the tests read.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from chalicelib.notify import MESSAGE_LIMIT, parse_message
from sagedrop.local.aws_shapes import client_error, iso, metadata, validate


class LocalSNS:
    def __init__(self, root: Path, say: Callable[[str], None] | None = None):
        self.folder = Path(root) / "notifications"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.say = say or (lambda line: print(line, file=sys.stdout, flush=True))
        self._lock = threading.Lock()

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
        record = {
            "MessageId": message_id,
            "Timestamp": iso(),
            "TopicArn": topic,
            "Subject": params.get("Subject", ""),
            "Message": params["Message"],
            "event": _event_part(params["Message"]),
        }
        with self._lock, open(self.topic_file(topic), "a") as handle:
            handle.write(json.dumps(record) + "\n")
        first_line = (params["Message"].splitlines() or [""])[0]
        self.say(f"[sns] {record['Subject']} | {first_line}" if record["Subject"] else first_line)
        return {**metadata(), "MessageId": message_id}


def _event_part(message: str) -> dict:
    try:
        return parse_message(message)
    except (IndexError, ValueError):
        return {}  # a message someone else published, without sagedrop's JSON part


def read_notifications(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

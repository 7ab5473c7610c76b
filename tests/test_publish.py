"""Publishing slices in bulk (``windfarm.dispatch.publish``) sends the messages
Celery's own ``send_task`` would, on the real Redis."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta

import pytest
import redis

from tests.support.procs import purge_queue
from windfarm import dispatch
from windfarm.config import get_settings
from windfarm.queue import SLICE_TASK, app

# What differs from one message to the next whoever sends it.
PER_MESSAGE_HEADERS = {"id", "root_id", "argsrepr"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "argsrepr"}


@pytest.fixture
def scratch_lane(monkeypatch: pytest.MonkeyPatch):
    """A bulk lane of this test's own on the run's Redis; its keys deleted afterwards."""
    queue = f"{get_settings().etl_queue}-publish-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ETL_QUEUE", queue)
    get_settings.cache_clear()
    url = get_settings().celery_broker_url
    client = redis.Redis.from_url(url)
    yield queue, client
    client.close()
    purge_queue(url, queue)
    monkeypatch.undo()
    get_settings.cache_clear()


def _messages(client: redis.Redis, queue: str) -> list[dict]:
    """The queue's messages, oldest first, with their bodies decoded."""
    envelopes = [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    for envelope in envelopes:
        assert envelope["properties"]["body_encoding"] == "base64"
        envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelopes


def test_bulk_messages_are_those_of_send_task_in_order(scratch_lane):
    queue, client = scratch_lane
    first = datetime(2025, 12, 5, 3)
    hours = [first + timedelta(hours=i) for i in range(3)]
    assert dispatch.publish(42, hours) == 3
    app.send_task(
        SLICE_TASK, (42, first.isoformat()), queue=queue, routing_key=queue, ignore_result=True
    )
    *ours, theirs = _messages(client, queue)

    assert [m["body"][0] for m in ours] == [[42, h.isoformat()] for h in hours]
    assert ours[0]["body"] == theirs["body"]
    for mine in ours:
        headers, properties = mine["headers"], mine["properties"]
        assert headers["task"] == SLICE_TASK and headers["root_id"] == headers["id"]
        assert headers["argsrepr"] == repr(tuple(mine["body"][0]))
        assert properties["correlation_id"] == headers["id"]
        assert {k: v for k, v in headers.items() if k not in PER_MESSAGE_HEADERS} == {
            k: v for k, v in theirs["headers"].items() if k not in PER_MESSAGE_HEADERS
        }
        assert {k: v for k, v in properties.items() if k not in PER_MESSAGE_PROPERTIES} == {
            k: v for k, v in theirs["properties"].items() if k not in PER_MESSAGE_PROPERTIES
        }
        envelope = ("headers", "properties", "body")
        assert {k: v for k, v in mine.items() if k not in envelope} == {
            k: v for k, v in theirs.items() if k not in envelope
        }
    assert len({m["headers"]["id"] for m in ours}) == 3

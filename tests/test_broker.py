"""windfarm.broker: kombu's Redis transport with one client per connection pool and
one Lua script per bookkeeping step, on the run's real Redis."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.procs import purge_queue
from windfarm.queue import app


def test_the_redis_broker_channel_builds_one_client_per_connection_pool():
    """windfarm.broker: kombu's Redis channel, without a new client object for
    every message's bookkeeping; a replaced pool (after a lost connection) gets
    a client of its own."""
    from windfarm import broker

    assert app.conf.broker_url.startswith("redis://")
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        # The URL keeps its scheme (Celery's banner, Flower's broker page read it).
        assert conn.as_uri().startswith("redis://")
        client = channel._create_client()
        assert channel._create_client() is client
        assert client.connection_pool is channel.pool and client.ping()
        with channel.conn_or_acquire() as acquired:
            assert acquired is client
        channel._disconnect_pools()  # what kombu does when the connection is lost
        renewed = channel._create_client()
        assert renewed is not client and renewed.connection_pool is channel.pool
        assert renewed.ping()


@pytest.fixture
def scratch_queue() -> Iterator[tuple[str, redis.Redis]]:
    """A queue of this test's own on the run's Redis, and a client to look at it;
    its keys and unacknowledged entries deleted afterwards."""
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    url = app.conf.broker_url
    client = redis.Redis.from_url(url)
    yield name, client
    client.close()
    purge_queue(url, name)


def test_unacknowledged_messages_are_kept_as_kombu_keeps_them(scratch_queue):
    """A delivered message is remembered in kombu's "unacked" hash and index
    (the entry kombu's own transaction writes, so kombu restores it), and
    forgotten when acknowledged; after Redis has lost its scripts too."""
    from windfarm import broker

    name, client = scratch_queue
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(name)
        try:
            assert isinstance(queue.channel.qos, broker.QoS)
            for body in ("first", "second", "third"):
                queue.put({"n": body})

            began = time.time()
            message = queue.get(block=False)
            tag = message.delivery_tag
            raw, exchange, routing_key = json.loads(client.hget("unacked", tag))
            assert (exchange, routing_key) == (name, name)
            assert raw["properties"]["delivery_tag"] == tag
            assert raw["properties"]["body_encoding"] == "base64"
            assert json.loads(base64.b64decode(raw["body"])) == {"n": "first"}
            assert began <= client.zscore("unacked_index", tag) <= time.time()
            message.ack()
            assert client.hget("unacked", tag) is None
            assert client.zscore("unacked_index", tag) is None

            # A restarted Redis has no scripts: the next call loads them again.
            client.script_flush()
            message = queue.get(block=False)
            assert client.hexists("unacked", message.delivery_tag)
            client.script_flush()
            message.ack()
            assert not client.hexists("unacked", message.delivery_tag)

            # kombu's restore (a dead worker's message, after the visibility
            # timeout) reads the entry back and puts the message on the queue.
            message = queue.get(block=False)
            queue.channel.qos.restore_by_tag(message.delivery_tag)
            assert not client.hexists("unacked", message.delivery_tag)
            again = queue.get(block=False)
            assert again.payload == {"n": "third"}
            again.ack()
            assert client.llen(name) == 0
        finally:
            queue.close()

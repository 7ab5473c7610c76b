"""kombu's Redis transport, with less work per message in a worker's main process.

kombu's Redis channel keeps, for every message delivered and not yet
acknowledged, an entry in two keys (the "unacked" hash and its index sorted by
delivery time), so that an unacknowledged message can be restored if its
worker dies. Two changes make that bookkeeping cheaper, with the same keys,
values and atomicity:

- **One client object per connection pool.** kombu builds a new ``redis.Redis``
  client for each bookkeeping command, copying redis-py's table of response
  callbacks each time: a fifth of a worker node's main process's CPU per
  message. The client is only a front for the channel's connection pool, and
  redis-py clients are safe to share, so this transport keeps one per pool and
  builds a new one only when the channel's pool is replaced (after a lost
  connection).
- **One command per bookkeeping step.** kombu remembers a delivered message
  and forgets an acknowledged one with a MULTI/EXEC transaction of two
  commands each: four commands, and redis-py's pipeline machinery around them.
  :class:`QoS` runs each step as one Lua script instead (``EVALSHA``), which
  Redis runs as atomically as the transaction. A Redis that restarted has
  forgotten the scripts; redis-py loads them again on the first call that
  finds them missing. Keys with a ``global_keyprefix`` (a transport option
  this project does not set) keep kombu's own transactions.

Everything else, restoring unacknowledged messages included, is kombu's.

:func:`use_for_redis_urls` makes it the transport of ``redis://`` URLs:
kombu's table of transport names, not Celery's ``broker_transport`` setting,
so that the URL keeps its scheme wherever it is shown or parsed again
(Celery's banner, Flower's broker page).
"""

from __future__ import annotations

from time import time
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis, virtual
from kombu.utils.json import dumps

# KEYS: the unacked index (sorted set), the unacked hash. What kombu's
# QoS.append and QoS.ack do in a transaction, as one script each.
_REMEMBER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
"""
_FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""


class QoS(redis.QoS):
    """kombu's Redis QoS, its two transactions replaced by scripts; the
    in-process part of each step is still the virtual transport's."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        client, remember, _ = self.channel.bookkeeping()
        remember(
            keys=(self.unacked_index_key, self.unacked_key),
            args=(time(), delivery_tag, entry),
            client=client,
        )
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)
            return
        client, _, forget = self.channel.bookkeeping()
        forget(keys=(self.unacked_index_key, self.unacked_key), args=(delivery_tag,), client=client)
        virtual.QoS.ack(self, delivery_tag)


class Channel(redis.Channel):
    QoS = QoS
    _shared_client: Any = None
    _scripts: tuple[Any, Any] = (None, None)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = self.Client(connection_pool=pool)
            self._scripts = (client.register_script(_REMEMBER), client.register_script(_FORGET))
        return client

    def bookkeeping(self) -> tuple[Any, Any, Any]:
        """The shared client and the two scripts of :class:`QoS` on it."""
        client = self._create_client()
        return client, *self._scripts


class Transport(redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """Make ``redis://`` broker URLs use :class:`Transport` in this process;
    before its first broker connection (:mod:`windfarm.queue` does it on import)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"

"""kombu's Redis transport, with one client object per connection pool.

kombu's Redis channel builds a new ``redis.Redis`` client for each of its
bookkeeping commands: when a message is delivered (to remember it as
unacknowledged) and when it is acknowledged. Building one copies redis-py's
table of response callbacks, about a fifth of a worker node's main process's
CPU per message. The client is only a front for the channel's connection
pool, and redis-py clients are safe to share, so this transport keeps one per
pool and builds a new one only when the channel's pool is replaced (after a
lost connection). Everything else is kombu's.

:func:`use_for_redis_urls` makes it the transport of ``redis://`` URLs:
kombu's table of transport names, not Celery's ``broker_transport`` setting,
so that the URL keeps its scheme wherever it is shown or parsed again
(Celery's banner, Flower's broker page).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis


class Channel(redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = self.Client(connection_pool=pool)
        return client


class Transport(redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """Make ``redis://`` broker URLs use :class:`Transport` in this process;
    before its first broker connection (:mod:`windfarm.queue` does it on import)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"

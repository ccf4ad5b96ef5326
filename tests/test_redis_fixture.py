"""The fleet tests' Redis is a real server process that the fixtures start and stop."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as redis_async

from .redis_server import RedisServer


async def test_redis_url_is_a_real_flushed_server(redis_url: str) -> None:
    """The shared server answers real commands, and each test starts with it empty."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("k", "v", px=1000)
        assert await client.get("k") == b"v"
        assert 0 < await client.pttl("k") <= 1000
    finally:
        await client.aclose()


async def test_append_only_server_keeps_data_across_a_restart(
    start_redis: Callable[..., RedisServer],
) -> None:
    """A private server with appendonly on survives SIGKILL and restart with its data."""
    server = start_redis(appendonly=True)
    client = redis_async.Redis.from_url(server.url)
    try:
        await client.set("kept", "1")
        await client.execute_command("BGREWRITEAOF")
    finally:
        await client.aclose()
    server.restart()
    client = redis_async.Redis.from_url(server.url)
    try:
        assert await client.get("kept") == b"1"
    finally:
        await client.aclose()

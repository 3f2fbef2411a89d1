"""Fixtures of the unit tests: a real redis-server for the Redis store backend (see
tests/helpers/redis_server.py)."""

from __future__ import annotations

from tests.helpers.redis_server import own_redis, redis_server, redis_url

__all__ = ["own_redis", "redis_server", "redis_url"]

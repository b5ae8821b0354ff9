"""redis-py through ringproxy: sync and asyncio, hiredis and pure-Python parsers, RESP2 and RESP3.

Usage: clients.py PORT. Prints one line per variant; exits non-zero on the first failure.
"""
import asyncio
import sys

import redis
import redis.asyncio
from redis._parsers import _AsyncRESP2Parser, _HiredisParser, _RESP2Parser, _RESP3Parser

PORT = int(sys.argv[1])
KEYS = [f"{i * 2654435761 % 2**32:x}:k" for i in range(1000)]


def check_sync(name, **kwargs):
    pool = redis.ConnectionPool(port=PORT, decode_responses=True, **kwargs)
    r = redis.Redis(connection_pool=pool, single_connection_client=True)
    assert r.ping()
    r.client_setname("py-client")
    assert r.client_getname() == "py-client"
    pipe = r.pipeline(transaction=False)
    pipe.set("py:a", "1").incr("py:a").get("py:a")
    pipe.hset("py:h", mapping={"f1": "x", "f2": "y"}).hgetall("py:h")
    pipe.delete("py:l").rpush("py:l", "a", "b", "c").lrange("py:l", 0, -1)
    pipe.expire("py:a", 100).ttl("py:a").delete("py:a", "py:h", "py:l")
    got = pipe.execute()
    assert got[:3] == [True, 2, "2"], got
    assert got[4] == {"f1": "x", "f2": "y"}, got
    assert got[6:8] == [3, ["a", "b", "c"]], got
    assert got[8] is True and 0 < got[9] <= 100 and got[10] == 3, got
    assert r.mset({k: k.upper() for k in KEYS})
    assert r.mget(KEYS) == [k.upper() for k in KEYS]
    assert r.mget(["absent", KEYS[0]]) == [None, KEYS[0].upper()]
    assert r.exists(*KEYS) == len(KEYS)
    assert r.delete(*KEYS) == len(KEYS)
    assert "maxmemory" in str(r.execute_command("CONFIG", "GET", "maxmemory"))
    try:
        r.execute_command("DEBUG", "SLEEP", "0")
        raise AssertionError("DEBUG should be refused")
    except redis.ResponseError as e:
        assert "unsupported command" in str(e), e
    r.rpush("py:queue", "job")
    assert tuple(r.blpop(["py:queue"], timeout=1)) == ("py:queue", "job")
    assert r.blpop(["py:queue"], timeout=0.1) is None
    assert r.ping(), "the connection survives an unsupported command"
    assert "redis_version" in r.info("server")
    print("ok", name)


async def check_async(name, **kwargs):
    pool = redis.asyncio.ConnectionPool(port=PORT, decode_responses=True, max_connections=300, **kwargs)
    r = redis.asyncio.Redis(connection_pool=pool)
    assert await r.ping()
    async with r.pipeline(transaction=False) as pipe:
        for k in KEYS[:200]:
            pipe.set(k, "v" + k)
        await pipe.execute()
    assert await r.mget(KEYS[:200]) == ["v" + k for k in KEYS[:200]]
    results = await asyncio.gather(*(r.get(k) for k in KEYS[:200]))
    assert results == ["v" + k for k in KEYS[:200]]
    assert await r.delete(*KEYS[:200]) == 200
    try:
        await r.execute_command("LASTSAVE")
        raise AssertionError("LASTSAVE should be refused")
    except redis.ResponseError as e:
        assert "unsupported command" in str(e), e
    assert await r.ping()
    await r.aclose()
    await pool.aclose()
    print("ok", name)


check_sync("sync hiredis RESP2", parser_class=_HiredisParser)
check_sync("sync python-parser RESP2", parser_class=_RESP2Parser)
check_sync("sync python-parser RESP3", protocol=3, parser_class=_RESP3Parser)
check_sync("sync hiredis RESP3", protocol=3, parser_class=_HiredisParser)
asyncio.run(check_async("asyncio hiredis"))
asyncio.run(check_async("asyncio python-parser", parser_class=_AsyncRESP2Parser))
asyncio.run(check_async("asyncio RESP3", protocol=3))

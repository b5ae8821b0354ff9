"""redis-py through ringproxy under concurrency: transactions, Lock, a stock-selling Lua script,
and Pub/Sub with patterns across shards (sync and asyncio).

Usage: locks_and_stock.py PORT. Prints one line per check; exits non-zero on the first failure.
"""
import asyncio
import sys
import threading

import redis
import redis.asyncio

from voucher import SELL

PORT = int(sys.argv[1])


def check_lock():
    """50 workers take turns on one lock; a non-atomic read-modify-write of a counter inside it
    loses no update, so no two workers ever held it at once."""
    pool = redis.ConnectionPool(port=PORT, max_connections=60)
    r = redis.Redis(connection_pool=pool)
    r.delete("lock:counter")
    rounds, workers, errors = 10, 50, []

    def worker():
        try:
            for _ in range(rounds):
                lock = r.lock("lock:resource", timeout=5, blocking_timeout=30)
                assert lock.acquire()
                try:
                    value = int(r.get("lock:counter") or 0)
                    lock.extend(2)
                    r.set("lock:counter", value + 1)
                finally:
                    lock.release()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert int(r.get("lock:counter")) == rounds * workers, r.get("lock:counter")
    assert r.get("lock:resource") is None, "the lock is free at the end"
    print("ok lock", rounds * workers, "acquisitions")


async def check_stock():
    """200 clients race to buy 500 items, at most 3 each: exactly 500 sold, none oversold."""
    stock, clients, attempts, limit = 500, 200, 5, 3
    keys = ["{item:42}:stock", "{item:42}:orders", "{item:42}:per-user"]
    setup = redis.asyncio.Redis(port=PORT)
    await setup.delete(*keys)
    await setup.set(keys[0], stock)
    sell = setup.register_script(SELL)

    async def customer(n):
        r = redis.asyncio.Redis(port=PORT, single_connection_client=True)
        sold = 0
        for a in range(attempts):
            sold += max(0, await sell(keys=keys, args=[f"user{n}", f"order-{n}-{a}", limit], client=r))
        await r.aclose()
        return sold

    sold = sum(await asyncio.gather(*(customer(n) for n in range(clients))))
    assert sold == stock, sold
    assert int(await setup.get(keys[0])) == 0
    assert await setup.scard(keys[1]) == stock
    per_user = await setup.hgetall(keys[2])
    assert max(int(v) for v in per_user.values()) <= limit
    await setup.aclose()
    print("ok stock", sold, "sold to", len(per_user), "customers")


def check_transactions():
    """Pipelined transactions, WATCH-based optimistic locking with redis-py's transaction helper."""
    r = redis.Redis(port=PORT, decode_responses=True)
    r.delete("{acct}:a", "{acct}:b")
    r.set("{acct}:a", 100)
    pipe = r.pipeline(transaction=True)
    pipe.decrby("{acct}:a", 30).incrby("{acct}:b", 30).get("{acct}:a")
    assert pipe.execute() == [70, 30, "70"]

    def move(p):
        a = int(p.get("{acct}:a"))
        p.multi()
        p.set("{acct}:a", a - 10)
        p.incrby("{acct}:b", 10)

    errors = []

    def mover():
        try:
            for _ in range(5):
                r.transaction(move, "{acct}:a")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=mover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert int(r.get("{acct}:a")) + int(r.get("{acct}:b")) == 100
    assert int(r.get("{acct}:a")) == 70 - 20 * 10
    print("ok transactions")


def check_pubsub_sync():
    """Channels of every shard and a pattern: each message arrives once, on the right channel."""
    r = redis.Redis(port=PORT, decode_responses=True)
    p = r.pubsub()
    channels = [f"events:{i * 2654435761 % 2**32:x}" for i in range(60)]
    p.subscribe(*channels[:30])
    p.psubscribe("events:*")
    confirmations = [p.get_message(timeout=5) for _ in range(31)]
    assert all(c and c["type"] in ("subscribe", "psubscribe") for c in confirmations), confirmations
    assert confirmations[-1]["data"] == 31
    # Wait until every shard holds the subscriptions: a probe reaches the pattern everywhere.
    for ch in channels:
        while r.publish(ch, "probe") < 1:
            pass
    sent = {}
    for i, ch in enumerate(channels):
        sent[ch] = r.publish(ch, f"m{i}")
        assert sent[ch] == (2 if i < 30 else 1), (ch, sent[ch])
    got = []
    while len(got) < 90:
        m = p.get_message(timeout=5)
        assert m is not None, f"only {len(got)} messages"
        if m["data"] != "probe":
            got.append((m["type"], m["channel"], m["data"]))
    assert sorted(g for g in got if g[0] == "message") == sorted(("message", ch, f"m{i}") for i, ch in enumerate(channels[:30]))
    assert sorted(g for g in got if g[0] == "pmessage") == sorted(("pmessage", ch, f"m{i}") for i, ch in enumerate(channels))
    p.close()
    print("ok pubsub sync")


async def check_pubsub_async():
    r = redis.asyncio.Redis(port=PORT, decode_responses=True)
    p = r.pubsub()
    await p.psubscribe("async:*")
    assert (await p.get_message(timeout=5))["type"] == "psubscribe"
    channels = [f"async:{i * 2654435761 % 2**32:x}" for i in range(30)]
    for ch in channels:
        while await r.publish(ch, "probe") < 1:
            pass
        await r.publish(ch, "hello " + ch)
    got = set()
    while len(got) < len(channels):
        m = await p.get_message(timeout=5)
        assert m is not None, f"only {len(got)} messages"
        if m["data"] != "probe":
            assert m["data"] == "hello " + m["channel"], m
            got.add(m["channel"])
    await p.aclose()
    await r.aclose()
    print("ok pubsub asyncio")


check_transactions()
check_lock()
asyncio.run(check_stock())
check_pubsub_sync()
asyncio.run(check_pubsub_async())

"""The voucher stock script through ringproxy while the shard's master is killed: 200 asyncio
clients buy until the stock is gone, retrying after errors. Sales are counted only when
acknowledged, so the count can never pass the stock unless an acknowledged sale was lost.

Usage: failover_stock.py PORT STOCK. Prints "ok sold N errors E"; exits non-zero on a failure.
"""
import asyncio
import sys
import time

import redis
import redis.asyncio

from voucher import SELL

PORT, STOCK = int(sys.argv[1]), int(sys.argv[2])
KEYS = ["{voucher}:stock", "{voucher}:orders", "{voucher}:per-user"]
DEADLINE = time.monotonic() + 60


async def main():
    setup = redis.asyncio.Redis(port=PORT)
    sell = setup.register_script(SELL)
    errors = 0

    async def customer(n):
        nonlocal errors
        r = redis.asyncio.Redis(port=PORT, single_connection_client=True)
        sold, attempt = 0, 0
        while time.monotonic() < DEADLINE:
            attempt += 1
            try:
                got = await sell(keys=KEYS, args=[f"user{n}", f"order-{n}-{attempt}", 10**9], client=r)
            except (redis.RedisError, OSError):
                errors += 1
                continue
            if got == 0:
                break
            sold += got
        await r.aclose()
        return sold

    sold = sum(await asyncio.gather(*(customer(n) for n in range(200))))
    await setup.aclose()
    assert sold <= STOCK, f"sold {sold} of a stock of {STOCK}"
    print("ok sold", sold, "errors", errors)


asyncio.run(main())

"""Continuous load through a load balancer while ringproxy instances restart and reload:
CLIENTS threads, each with its own redis-py client that retries a command after a connection
error (a closed connection is what a client may see while instances drain). Each thread SETs
keys of its own and reads back every tenth. It runs until the file STOP exists (or two
minutes pass, or a million writes), writing the acknowledged count to PROGRESS as it goes,
then checks every acknowledged write through a new connection.

Usage: ha_load.py PORT CLIENTS PROGRESS STOP. Prints "ok acked N retried R" and exits 0, or
prints each failure ("lost", "wrong read", any error other than a closed connection) and
exits 1.
"""
import os
import sys
import threading
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

PORT, CLIENTS, PROGRESS, STOP = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
DEADLINE = time.monotonic() + 120
MAX_WRITES = 1_000_000


class CountingRetry(Retry):
    """Retries after connection errors (redis-py's default kinds), counting them."""

    def __init__(self):
        super().__init__(ExponentialBackoff(cap=0.2, base=0.005), 200)
        self.failures = 0

    def call_with_retry(self, do, fail, *args, **kwargs):
        def counted(error, *more):
            self.failures += 1
            return fail(error, *more)

        return super().call_with_retry(do, counted, *args, **kwargs)


lock = threading.Lock()
acked = {}
failures = []
retried = 0


def client(n):
    global retried
    retry = CountingRetry()
    r = redis.Redis(port=PORT, retry=retry, socket_timeout=10)
    mine = []
    i = 0
    while (time.monotonic() < DEADLINE and len(acked) < MAX_WRITES and len(failures) < 100
           and not os.path.exists(STOP)):
        key, value = f"ha:{n}:{i}", f"v{n}.{i}"
        try:
            if r.set(key, value) is not True:
                raise AssertionError(f"SET {key} was not acknowledged")
            mine.append((key, value))
            if i % 10 == 0 and mine:
                old_key, old_value = mine[len(mine) // 2]
                got = r.get(old_key)
                if got != old_value.encode():
                    with lock:
                        failures.append(f"wrong read: {old_key} is {got!r}, not {old_value}")
        except redis.ConnectionError:
            pass  # gave up after retries: a closed connection, allowed
        except Exception as e:  # noqa: BLE001 - every other error fails the check
            with lock:
                failures.append(f"client {n}: {type(e).__name__}: {e}")
            time.sleep(0.001)
        i += 1
        if i % 100 == 0:
            with lock:
                acked.update(mine[-100:])
                total = len(acked)
            with open(PROGRESS + ".tmp", "w") as f:
                f.write(str(total))
            os.replace(PROGRESS + ".tmp", PROGRESS)
    with lock:
        acked.update(mine)
        retried += retry.failures
    r.close()


threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()

check = redis.Redis(port=PORT, retry=CountingRetry())
items = list(acked.items())
lost = 0
for start in range(0, len(items), 500):
    batch = items[start:start + 500]
    values = check.mget([k for k, _ in batch])
    for (key, value), got in zip(batch, values):
        if got != value.encode():
            lost += 1
            if lost <= 10:
                failures.append(f"lost: {key} is {got!r}, not {value}")
if lost:
    failures.append(f"{lost} acknowledged writes lost")
for f in failures[:20]:
    print(f)
print(f"{'ok' if not failures else 'failed'} acked {len(items)} retried {retried}")
sys.exit(1 if failures else 0)

"""pymemcache through ringproxy, pointed at the proxy as at a single memcached.

Usage: memcache_clients.py PORT. Prints one line per check; exits non-zero on the first failure.
"""
import sys
import threading

from pymemcache.client.base import Client, PooledClient
from pymemcache.exceptions import MemcacheClientError

PORT = int(sys.argv[1])
KEYS = [f"py:{i * 2654435761 % 2**32:x}" for i in range(1000)]


def check_single_client():
    c = Client(("127.0.0.1", PORT), connect_timeout=5, timeout=5)
    # pymemcache sends storage commands with noreply unless told otherwise.
    assert c.set("py:a", "1") is True
    assert c.get("py:a") == b"1"
    assert c.set("py:a", "2", noreply=False) is True
    assert c.add("py:a", "x", noreply=False) is False
    assert c.replace("py:a", "3", noreply=False) is True
    assert c.append("py:a", "4", noreply=False) is True
    assert c.prepend("py:a", "0", noreply=False) is True
    assert c.get("py:a") == b"034"
    value, cas = c.gets("py:a")
    assert value == b"034"
    assert c.cas("py:a", "new", cas, noreply=False) is True
    assert c.cas("py:a", "stale", cas, noreply=False) is False
    assert c.set("py:n", "10", noreply=False)
    assert c.incr("py:n", 5) == 15 and c.decr("py:n", 20) == 0
    assert c.incr("py:absent", 1) is None
    assert c.touch("py:a", 100, noreply=False) is True
    assert c.delete("py:a", noreply=False) is True
    assert c.delete("py:a", noreply=False) is False
    assert c.get("py:a") is None
    # Many keys across shards: one get_many, values in the right places.
    assert c.set_many({k: k.upper() for k in KEYS}) == []
    got = c.get_many(KEYS + ["py:absent"])
    assert got == {k: k.upper().encode() for k in KEYS}, len(got)
    with_cas = c.gets_many(KEYS[:50])
    assert len(with_cas) == 50 and all(cas for _, cas in with_cas.values())
    assert c.delete_many(KEYS) is True
    assert c.get_many(KEYS[:10]) == {}
    # Values with every byte, and a large one.
    blob = bytes(range(256)) * 1000
    assert c.set("py:blob", blob, noreply=False)
    assert c.get("py:blob") == blob
    assert c.version().startswith(b"1.")
    stats = c.stats()
    # The pool as one memcached: its servers' version, and the proxy's own beside it.
    assert stats[b"version"].startswith(b"1.") and stats[b"proxy_version"].startswith(b"ringproxy-"), stats
    try:
        c.flush_all(noreply=False)
        raise AssertionError("flush_all should be refused")
    except MemcacheClientError as e:
        assert "allow_flush" in str(e), e
    assert c.get("py:blob") == blob, "the connection survives the refusal"
    c.close()
    print("ok single client")


def check_pooled_threads():
    c = PooledClient(("127.0.0.1", PORT), max_pool_size=16, connect_timeout=5, timeout=5)
    errors = []

    def worker(n):
        try:
            for i in range(200):
                key = f"py:t{n}:{i}"
                c.set(key, str(i), noreply=False)
                assert c.get(key) == str(i).encode()
            keys = [f"py:t{n}:{i}" for i in range(200)]
            assert c.get_many(keys) == {k: str(i).encode() for i, k in enumerate(keys)}
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    print("ok pooled threads")


check_single_client()
check_pooled_threads()

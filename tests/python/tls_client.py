"""redis-py over TLS: `tls_client.py PORT CA_FILE [CERT KEY]`. Prints "ok …" per check."""

import sys

import redis

port, ca = int(sys.argv[1]), sys.argv[2]
identity = {}
if len(sys.argv) > 4:
    identity = {"ssl_certfile": sys.argv[3], "ssl_keyfile": sys.argv[4]}
r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, **identity)
assert r.ping()
print("ok ping")
r.set("py:tls", "v" * 100_000)
assert r.get("py:tls") == b"v" * 100_000
print("ok large value")
pipe = r.pipeline(transaction=False)
for n in range(1000):
    pipe.set(f"py:tls:{n}", n)
pipe.mget([f"py:tls:{n}" for n in range(1000)])
replies = pipe.execute()
assert replies[-1] == [str(n).encode() for n in range(1000)], replies[-1][:5]
print("ok pipeline across shards")

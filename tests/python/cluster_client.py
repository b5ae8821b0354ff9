"""redis-py's cluster client through ringproxy's cluster pool: it asks CLUSTER SLOTS, finds
one node serving every slot (the proxy), and sends everything there.

Usage: cluster_client.py PORT. Prints one line per check; exits non-zero on the first failure.
"""
import sys

import redis
from redis.cluster import RedisCluster

PORT = int(sys.argv[1])

rc = RedisCluster(host="127.0.0.1", port=PORT, decode_responses=True)
nodes = rc.get_nodes()
assert [(n.host, n.port) for n in nodes] == [("127.0.0.1", PORT)], nodes
print("ok one node serves every slot")
keys = [f"py:cluster:{i}" for i in range(300)]
for k in keys:
    rc.set(k, k.upper())
assert rc.mget_nonatomic(keys) == [k.upper() for k in keys]
assert rc.keyslot("{user1000}.following") == 3443
assert rc.cluster_keyslot("foo") == 12182
pipe = rc.pipeline()
for k in keys[:50]:
    pipe.incr(k + ":n")
assert pipe.execute() == [1] * 50
assert rc.delete(*keys) == len(keys)
print("ok keys spread over the cluster behind it")
info = rc.cluster_info()
assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384, info
print("ok cluster info")

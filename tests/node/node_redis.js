// node-redis (the `redis` package) through ringproxy: its connect handshake (CLIENT SETINFO,
// CLIENT SETNAME, SELECT), pipelines across shards, MULTI/WATCH, scripts, Pub/Sub with the
// receivers PUBLISH counts, blocking pops, and SCAN as an iterator.
//
// Usage: node node_redis.js PORT. Prints "ok <check>" per check; exits non-zero on the first failure.
"use strict";
const assert = require("node:assert/strict");
const { createClient, defineScript } = require("redis");

const port = Number(process.argv[2]);
const scripts = {
  addTo: defineScript({
    NUMBER_OF_KEYS: 2,
    SCRIPT: "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])",
    parseCommand(parser, a, b, by) {
      parser.pushKeys([a, b]);
      parser.push(String(by));
    },
    transformReply: (reply) => reply,
  }),
};
const open = async () => {
  const client = createClient({ url: `redis://127.0.0.1:${port}/0`, name: "node-redis-test", scripts });
  client.on("error", (e) => console.error("client error", e));
  return client.connect();
};
const keys = Array.from({ length: 500 }, (_, i) => `nr:${(i * 2654435761) % 2 ** 32}`);

async function handshake(r) {
  assert.equal(await r.ping(), "PONG");
  assert.equal(await r.clientGetName(), "node-redis-test");
  const info = Object.fromEntries((await r.info("server")).split("\r\n").map((l) => l.split(":")));
  assert.equal(info.redis_mode, "standalone");
  console.log("ok handshake");
}

async function pipelines(r) {
  // Commands sent in one tick go out as one pipeline.
  const sets = await Promise.all(keys.map((k) => r.set(k, `v-${k}`)));
  assert.ok(sets.every((reply) => reply === "OK"));
  const gets = await Promise.all(keys.map((k) => r.get(k)));
  assert.deepEqual(gets, keys.map((k) => `v-${k}`));
  const batch = await r.multi().get(keys[0]).get(keys[1]).execAsPipeline();
  assert.deepEqual(batch, [`v-${keys[0]}`, `v-${keys[1]}`]);
  assert.deepEqual(await r.mGet(keys), keys.map((k) => `v-${k}`));
  console.log("ok pipeline across shards");
}

async function scan(r) {
  const seen = new Set();
  for await (const batch of r.scanIterator({ MATCH: "nr:*", COUNT: 100 })) batch.forEach((k) => seen.add(k));
  assert.equal(seen.size, keys.length);
  assert.equal(await r.del(keys), keys.length);
  console.log("ok scanIterator");
}

async function transactions(r) {
  const got = await r.multi().set("{acct}:a", "10").incrBy("{acct}:a", 5).get("{acct}:a").exec();
  assert.deepEqual(got, ["OK", 15, "15"]);
  // WATCH on a client of its own (node-redis runs WATCH on an isolated connection), a write from
  // another client, EXEC: the transaction is dropped.
  const watcher = await open();
  await watcher.watch("{acct}:a");
  await r.set("{acct}:a", "99");
  await assert.rejects(watcher.multi().set("{acct}:a", "0").exec(), /WATCH/i);
  assert.equal(await r.get("{acct}:a"), "99");
  await watcher.quit();
  console.log("ok multi exec watch");
}

async function scriptCalls(r) {
  // The first call meets NOSCRIPT on the shard and node-redis sends EVAL; later ones EVALSHA.
  assert.equal(await r.addTo("{s}:x", "{s}:y", 2), 4);
  assert.equal(await r.addTo("{s}:x", "{s}:y", 3), 10);
  assert.equal(await r.eval("return ARGV[1]", { arguments: ["hello"] }), "hello");
  console.log("ok scripts");
}

async function pubsub(r) {
  const sub = await open();
  const received = [];
  let done;
  const three = new Promise((resolve) => (done = resolve));
  const collect = (message, channel) => {
    received.push([channel, message]);
    if (received.length === 3) done();
  };
  await sub.subscribe(["news", "sports"], collect);
  await sub.pSubscribe("log.*", collect);
  assert.equal(await r.publish("news", "n1"), 1);
  assert.equal(await r.publish("sports", "s1"), 1);
  assert.equal(await r.publish("log.web", "l1"), 1);
  await three;
  assert.deepEqual(received.sort(), [["log.web", "l1"], ["news", "n1"], ["sports", "s1"]]);
  // Unsubscribed channels have no receiver left.
  await sub.unsubscribe("news");
  assert.equal(await r.publish("news", "n2"), 0);
  assert.equal(await r.publish("sports", "s2"), 1);
  await sub.quit();
  console.log("ok pubsub");
}

async function blocking(r) {
  const waiter = await open();
  const popped = waiter.blPop("nr:queue", 5);
  // The pop is waiting on the shard once the proxy counts a blocked client.
  for (let i = 0; i < 500 && !/blocked_clients:[1-9]/.test(await r.info("clients")); i++) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  await r.rPush("nr:queue", "job-1");
  assert.deepEqual(await popped, { key: "nr:queue", element: "job-1" });
  assert.equal(await waiter.brPop("nr:queue", 0.1), null);
  await waiter.quit();
  console.log("ok blocking pops");
}

async function main() {
  const r = await open();
  await handshake(r);
  await pipelines(r);
  await scan(r);
  await transactions(r);
  await scriptCalls(r);
  await pubsub(r);
  await blocking(r);
  await r.quit();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

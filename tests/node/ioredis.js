// ioredis through ringproxy: its connect handshake (INFO ready check, CLIENT SETNAME, SELECT 0),
// pipelines across shards, MULTI, scripts (EVALSHA falling back to EVAL), Pub/Sub with the
// receivers PUBLISH counts, blocking pops, and SCAN as a stream.
//
// Usage: node ioredis.js PORT. Prints "ok <check>" per check; exits non-zero on the first failure.
"use strict";
const assert = require("node:assert/strict");
const Redis = require("ioredis");

const port = Number(process.argv[2]);
const open = (options = {}) =>
  new Redis({ port, host: "127.0.0.1", connectionName: "ioredis-test", db: 0, maxRetriesPerRequest: 1, ...options });
const keys = Array.from({ length: 500 }, (_, i) => `io:${(i * 2654435761) % 2 ** 32}`);

async function handshake(r) {
  assert.equal(await r.ping(), "PONG");
  assert.equal(await r.client("GETNAME"), "ioredis-test");
  // Ready means its INFO check passed (no `loading:1`).
  assert.equal(r.status, "ready");
  const info = Object.fromEntries((await r.info("server")).split("\r\n").map((l) => l.split(":")));
  assert.equal(info.redis_mode, "standalone");
  assert.match(info.redis_version, /^\d+\.\d+\.\d+$/);
  console.log("ok handshake");
}

async function pipelines(r) {
  const pipe = r.pipeline();
  keys.forEach((k) => pipe.set(k, `v-${k}`));
  keys.forEach((k) => pipe.get(k));
  const got = await pipe.exec();
  assert.equal(got.length, 2 * keys.length);
  got.slice(0, keys.length).forEach(([err, reply]) => assert.deepEqual([err, reply], [null, "OK"]));
  got.slice(keys.length).forEach(([err, reply], i) => assert.deepEqual([err, reply], [null, `v-${keys[i]}`]));
  assert.deepEqual(await r.mget(...keys), keys.map((k) => `v-${k}`));
  console.log("ok pipeline across shards");
}

async function scan(r) {
  const seen = new Set();
  for await (const batch of r.scanStream({ match: "io:*", count: 100 })) batch.forEach((k) => seen.add(k));
  assert.equal(seen.size, keys.length);
  assert.equal(await r.del(...keys), keys.length);
  console.log("ok scanStream");
}

async function transactions(r) {
  const got = await r.multi().set("{acct}:a", "10").incrby("{acct}:a", 5).get("{acct}:a").exec();
  assert.deepEqual(got, [[null, "OK"], [null, 15], [null, "15"]]);
  // WATCH, a write from another client, EXEC: the transaction is dropped.
  const other = open();
  await r.watch("{acct}:a");
  await other.set("{acct}:a", "99");
  assert.equal(await r.multi().set("{acct}:a", "0").exec(), null);
  assert.equal(await r.get("{acct}:a"), "99");
  other.disconnect();
  // A command refused while queueing aborts the whole transaction.
  await assert.rejects(r.multi().set("{acct}:a", "1").call("NOSUCHCMD").exec(), /EXECABORT/);
  assert.equal(await r.get("{acct}:a"), "99");
  console.log("ok multi exec watch");
}

async function scripts(r) {
  r.defineCommand("addTo", {
    numberOfKeys: 2,
    lua: "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])",
  });
  // The first call meets NOSCRIPT on the shard and ioredis sends EVAL; later ones EVALSHA.
  assert.equal(await r.addTo("{s}:x", "{s}:y", 2), 4);
  assert.equal(await r.addTo("{s}:x", "{s}:y", 3), 10);
  assert.equal(await r.eval("return ARGV[1]", 0, "hello"), "hello");
  console.log("ok scripts");
}

async function pubsub() {
  const sub = open();
  const pub = open();
  const received = [];
  const twoMessages = new Promise((resolve) =>
    sub.on("message", (channel, message) => {
      received.push([channel, message]);
      if (received.length === 2) resolve();
    }),
  );
  const patterned = new Promise((resolve) => sub.on("pmessage", (pattern, channel, message) => resolve([pattern, channel, message])));
  assert.equal(await sub.subscribe("news", "sports"), 2);
  assert.equal(await sub.psubscribe("log.*"), 3);
  assert.equal(await pub.publish("news", "n1"), 1);
  assert.equal(await pub.publish("sports", "s1"), 1);
  assert.equal(await pub.publish("log.web", "l1"), 1);
  await twoMessages;
  assert.deepEqual(received.sort(), [["news", "n1"], ["sports", "s1"]]);
  assert.deepEqual(await patterned, ["log.*", "log.web", "l1"]);
  // Unsubscribed channels have no receiver left.
  await sub.unsubscribe("news");
  assert.equal(await pub.publish("news", "n2"), 0);
  assert.equal(await pub.publish("sports", "s2"), 1);
  sub.disconnect();
  pub.disconnect();
  console.log("ok pubsub");
}

async function blocking(r) {
  const waiter = open();
  const popped = waiter.blpop("io:queue", 5);
  // The pop is waiting on the shard once the proxy counts a blocked client.
  for (let i = 0; i < 500 && !/blocked_clients:[1-9]/.test(await r.info("clients")); i++) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  await r.rpush("io:queue", "job-1");
  assert.deepEqual(await popped, ["io:queue", "job-1"]);
  assert.equal(await waiter.brpop("io:queue", 0.1), null);
  waiter.disconnect();
  console.log("ok blocking pops");
}

async function main() {
  const r = open();
  await handshake(r);
  await pipelines(r);
  await scan(r);
  await transactions(r);
  await scripts(r);
  await pubsub();
  await blocking(r);
  r.disconnect();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

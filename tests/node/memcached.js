// Node's `memcached` client (text protocol) through a ringproxy memcache pool: storage
// commands, multi-key gets across shards, CAS, counters, touch and the pool's stats.
//
// Usage: node memcached.js PORT. Prints "ok <check>" per check; exits non-zero on the first failure.
"use strict";
const assert = require("node:assert/strict");
const { promisify } = require("node:util");
const Memcached = require("memcached");

const port = Number(process.argv[2]);
const mc = new Memcached(`127.0.0.1:${port}`, { timeout: 5000 });
const call = (name, ...args) => promisify(mc[name]).call(mc, ...args);
const keys = Array.from({ length: 300 }, (_, i) => `js:${(i * 2654435761) % 2 ** 32}`);

async function storage() {
  for (const k of keys) assert.equal(await call("set", k, `v-${k}`, 100), true);
  assert.equal(await call("get", keys[0]), `v-${keys[0]}`);
  const many = await call("getMulti", keys);
  assert.deepEqual(many, Object.fromEntries(keys.map((k) => [k, `v-${k}`])));
  assert.equal(await call("add", keys[0], "again", 100).catch((e) => e.notStored), true);
  assert.equal(await call("replace", keys[0], "replaced", 100), true);
  assert.equal(await call("append", keys[0], "+tail"), true);
  assert.equal(await call("prepend", keys[0], "head+"), true);
  assert.equal(await call("get", keys[0]), "head+replaced+tail");
  console.log("ok storage and getMulti across shards");
}

async function casCountersTouch() {
  assert.equal(await call("gets", "js:cas"), undefined, "nothing for a missing key");
  await call("set", "js:cas", "one", 100);
  const got = await call("gets", "js:cas");
  assert.equal(got["js:cas"], "one");
  assert.equal(await call("cas", "js:cas", "two", got.cas, 100), true);
  assert.equal(await call("cas", "js:cas", "three", got.cas, 100), false, "a stale CAS is refused");
  assert.equal(await call("get", "js:cas"), "two");
  await call("set", "js:n", "10", 100);
  assert.equal(await call("incr", "js:n", 5), 15);
  assert.equal(await call("decr", "js:n", 20), 0);
  assert.equal(await call("touch", "js:n", 200), true);
  assert.equal(await call("del", "js:n"), true);
  assert.equal(await call("get", "js:n"), undefined);
  console.log("ok cas counters touch delete");
}

async function stats() {
  const [server] = await call("stats");
  assert.ok(Number(server.curr_items) >= keys.length, JSON.stringify(server));
  assert.ok(server.version, "the servers' version");
  const [version] = await call("version");
  assert.match(version.version, /^\d+\.\d+\.\d+/);
  console.log("ok stats and version");
}

async function main() {
  await storage();
  await casCountersTouch();
  await stats();
  mc.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

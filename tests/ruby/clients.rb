# The redis gem (Debian's ruby-redis) through ringproxy: its connect handshake (SELECT,
# CLIENT SETNAME), pipelines across shards, MULTI/WATCH, scripts, Pub/Sub with the receivers
# PUBLISH counts, blocking pops, and SCAN as an enumerator.
#
# Usage: ruby clients.rb PORT. Prints "ok <check>" per check; exits non-zero on the first failure.
require "redis"
require "timeout"

PORT = Integer(ARGV[0])
KEYS = (0...500).map { |i| "rb:#{(i * 2654435761) % 2**32}" }

def open_client
  Redis.new(host: "127.0.0.1", port: PORT, db: 0, id: "ruby-test", timeout: 5)
end

def check(condition, what)
  raise "failed: #{what}" unless condition
end

# The next item of `queue`: a failure, not a wait for ever, when none comes.
def take(queue, what)
  Timeout.timeout(10) { queue.pop }
rescue Timeout::Error
  raise "failed: no #{what} within 10 s"
end

def handshake(r)
  check(r.ping == "PONG", "PING")
  check(r.call(:client, :getname) == "ruby-test", "CLIENT GETNAME")
  check(r.info("server")["redis_mode"] == "standalone", "INFO server")
  puts "ok handshake"
end

def pipelines(r)
  sets = r.pipelined { |p| KEYS.each { |k| p.set(k, "v-#{k}") } }
  check(sets.all?("OK"), "pipelined SETs")
  gets = r.pipelined { |p| KEYS.each { |k| p.get(k) } }
  check(gets == KEYS.map { |k| "v-#{k}" }, "pipelined GETs")
  check(r.mget(*KEYS) == KEYS.map { |k| "v-#{k}" }, "MGET")
  puts "ok pipeline across shards"
end

def scan(r)
  seen = r.scan_each(match: "rb:*", count: 100).to_a.uniq
  check(seen.sort == KEYS.sort, "scan_each saw every key once")
  check(r.del(*KEYS) == KEYS.size, "DEL")
  puts "ok scan_each"
end

def transactions(r)
  got = r.multi do |tx|
    tx.set("{acct}:a", "10")
    tx.incrby("{acct}:a", 5)
    tx.get("{acct}:a")
  end
  check(got == ["OK", 15, "15"], "MULTI/EXEC #{got.inspect}")
  other = open_client
  dropped = r.watch("{acct}:a") do
    other.set("{acct}:a", "99")
    r.multi { |tx| tx.set("{acct}:a", "0") }
  end
  check(dropped.nil?, "EXEC after a watched key changed")
  check(r.get("{acct}:a") == "99", "the transaction did not run")
  other.close
  begin
    r.multi { |tx| tx.call(:nosuchcmd) }
    raise "an unknown command inside MULTI should abort EXEC"
  rescue Redis::CommandError => e
    check(e.message.include?("unknown command"), e.message)
  end
  check(r.get("{acct}:a") == "99", "still serving after EXECABORT")
  puts "ok multi exec watch"
end

def scripts(r)
  lua = "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])"
  sha = r.script(:load, lua)
  check(r.evalsha(sha, keys: ["{s}:x", "{s}:y"], argv: [2]) == 4, "EVALSHA")
  check(r.eval(lua, keys: ["{s}:x", "{s}:y"], argv: [3]) == 10, "EVAL")
  check(r.script(:exists, sha) == true, "SCRIPT EXISTS")
  puts "ok scripts"
end

def pubsub(r)
  sub = open_client
  received = Queue.new
  confirmed = Queue.new
  listener = Thread.new do
    sub.subscribe("news", "sports") do |on|
      on.subscribe { |channel, count| confirmed << [:subscribe, channel, count] }
      on.unsubscribe { |channel, count| confirmed << [:unsubscribe, channel, count] }
      on.message do |channel, message|
        received << [channel, message]
        sub.unsubscribe("news") if message == "s1"
        sub.unsubscribe if message == "s2"
      end
    end
  end
  check([take(confirmed, "confirmation"), take(confirmed, "confirmation")] ==
        [[:subscribe, "news", 1], [:subscribe, "sports", 2]], "SUBSCRIBE confirmations")
  # Confirmed means heard: PUBLISH counts the subscriber at once. The channels may live on
  # different shards, whose messages reach the client in either order: one at a time.
  check(r.publish("news", "n1") == 1, "PUBLISH to a subscribed channel")
  check(take(received, "message") == %w[news n1], "the message on news")
  check(r.publish("sports", "s1") == 1, "PUBLISH to the other channel")
  check(take(received, "message") == %w[sports s1], "the message on sports")
  # After "s1" the listener leaves "news"; once that is confirmed, no receiver is left for it.
  check(take(confirmed, "confirmation") == [:unsubscribe, "news", 1], "UNSUBSCRIBE confirmation")
  check(r.publish("news", "n2").zero?, "an unsubscribed channel has no receiver")
  check(r.publish("sports", "s2") == 1, "the other channel keeps its receiver")
  check(take(confirmed, "confirmation") == [:unsubscribe, "sports", 0],
        "the last UNSUBSCRIBE confirmation")
  check(r.publish("sports", "s3").zero?, "no receiver is left after the last UNSUBSCRIBE")
  listener.join(5) or raise "the listener did not leave"
  sub.close
  puts "ok pubsub"
end

def blocking(r)
  waiter = open_client
  popped = Thread.new { waiter.blpop("rb:queue", timeout: 5) }
  deadline = Time.now + 5
  Thread.pass until r.info("clients")["blocked_clients"].to_i.positive? || Time.now > deadline
  r.rpush("rb:queue", "job-1")
  check(popped.value == ["rb:queue", "job-1"], "BLPOP woken by RPUSH")
  check(waiter.brpop("rb:queue", timeout: 0.1).nil?, "BRPOP times out with nil")
  waiter.close
  puts "ok blocking pops"
end

r = open_client
handshake(r)
pipelines(r)
scan(r)
transactions(r)
scripts(r)
pubsub(r)
blocking(r)
r.close

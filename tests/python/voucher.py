"""The voucher stock script both Python checks run: sells one unit while stock lasts, at most
ARGV[3] per user. KEYS: stock, orders (a set of order ids), per-user counts (a hash).
ARGV: user, order id, limit per user. Returns 1 sold, 0 sold out, -1 over the user's limit."""

SELL = """
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock <= 0 then return 0 end
local bought = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if bought >= tonumber(ARGV[3]) then return -1 end
redis.call('DECR', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return 1
"""

-- A node's online entries for users (all keys in one slot: one Redis, or one
-- cluster partition). KEYS: per user, its online set (node -> expiry, ms) and its
-- last-seen key. ARGV[1] node, ARGV[2] entry ttl (ms), ARGV[3] last-seen ttl (ms),
-- then per user '+' (connected here or still here) or '-' (its last connection
-- here went).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local online = KEYS[i]
  if ARGV[3 + (i + 1) / 2] == '-' then
    redis.call('ZREM', online, ARGV[1])
  else
    redis.call('ZADD', online, now + ttl, ARGV[1])
  end
  redis.call('ZREMRANGEBYSCORE', online, '-inf', now)
  if redis.call('ZCARD', online) == 0 then
    redis.call('DEL', online)
  else
    redis.call('PEXPIRE', online, ttl)
  end
  redis.call('SET', KEYS[i + 1], now, 'PX', ARGV[3])
end
return #KEYS / 2

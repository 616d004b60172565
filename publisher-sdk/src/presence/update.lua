-- A node's joins and leaves on one channel, batched.
-- ARGV[1] node, ARGV[2] node key prefix, ARGV[3] entry ttl (ms), ARGV[4] grace (ms),
-- ARGV[5] most members, ARGV[6] PUBLISH or SPUBLISH, ARGV[7] pub/sub channel ('' when the rule has no events),
-- ARGV[8] channel, ARGV[9] number of joins J, then J x (client, user, member JSON,
-- join JSON), then the clients that left.
-- A user joins when their first connection arrives, unless their leave is still
-- pending (a reconnect within the grace period: neither leave nor join); a user's
-- leave is due `grace` after their last connection went.
-- Returns {ms until the next leave is due or -1, refused clients...}.
local now = now_ms()
local ttl, grace, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local node_key = ARGV[2] .. ARGV[1]
sweep_nodes(now, ARGV[2])
redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
local joins, refused = {}, {}
local i = 10
for _ = 1, tonumber(ARGV[9]) do
  local client, user = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[1], client) == 0 then
    if redis.call('HLEN', KEYS[1]) >= max then
      refused[#refused + 1] = client
    else
      redis.call('HSET', KEYS[1], client, ARGV[i + 2])
      redis.call('ZADD', KEYS[2], 0, client)
      redis.call('HSET', node_key, client, user)
      if redis.call('HINCRBY', KEYS[3], user, 1) == 1 then
        if redis.call('ZREM', KEYS[4], user) == 0 then
          joins[#joins + 1] = ARGV[i + 3]
        else
          -- Back within the grace period: this connection replaces the one left
          -- listed, and nobody is told anything.
          unlinger(user)
        end
      end
    end
  end
  i = i + 4
end
for j = i, #ARGV do
  local client = ARGV[j]
  local user = redis.call('HGET', node_key, client)
  if user then
    redis.call('HDEL', node_key, client)
    if drop_client(client, user) then
      redis.call('ZADD', KEYS[4], now + grace, user)
    end
  end
end
local left = due_leaves(now)
expire_all(ttl, grace, node_key)
publish_diff(ARGV[6], ARGV[7], ARGV[8], now, joins, left)
local out = {next_due(now)}
for _, c in ipairs(refused) do
  out[#out + 1] = c
end
return out

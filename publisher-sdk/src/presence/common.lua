-- Shared by the channel presence scripts (prepended to each).
-- KEYS[1] members (hash client -> member JSON), KEYS[2] index (sorted set of
-- clients, all scores 0, for paging in client order), KEYS[3] users (hash user ->
-- connections present), KEYS[4] leaving (sorted set user -> when the leave is due),
-- KEYS[5] nodes (sorted set node -> expiry of its entries, ms), KEYS[6] lingering
-- (hash user -> their last connection, still listed while their leave is pending).
-- Per node, the hash <node prefix><node> (client -> user) says what to remove when
-- the node's entries expire; its name shares the channel's hash tag, so it lives in
-- the same slot. Every time is Redis' own clock (TIME), so nodes' clocks need not
-- agree.
--
-- Listings agree with the events: a user whose last connection went stays listed
-- (that connection's entry, and a count of 0 in `users`) until their leave is
-- announced; if they come back within the grace period, the new connection takes
-- the old entry's place and no event is sent.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function unlist(client)
  redis.call('HDEL', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
end

-- The entry a user's last connection left listed, removed.
local function unlinger(user)
  local old = redis.call('HGET', KEYS[6], user)
  if old then
    redis.call('HDEL', KEYS[6], user)
    unlist(old)
  end
end

-- Removes a client; returns true when it was its user's last connection (whose
-- entry then stays listed until the user's leave is announced).
local function drop_client(client, user)
  if redis.call('HEXISTS', KEYS[1], client) == 0 then
    return false
  end
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HSET', KEYS[3], user, 0)
    unlinger(user)
    redis.call('HSET', KEYS[6], user, client)
    return true
  end
  unlist(client)
  return false
end

-- Removes the entries of nodes that stopped refreshing (crashed or cut off); their
-- users' leaves are due at once (they have been gone longer than the entry ttl).
local function sweep_nodes(now, prefix)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  for _, node in ipairs(dead) do
    local key = prefix .. node
    local entries = redis.call('HGETALL', key)
    for i = 1, #entries, 2 do
      if drop_client(entries[i], entries[i + 1]) then
        redis.call('ZADD', KEYS[4], now, entries[i + 1])
      end
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[5], node)
  end
end

-- Users whose leave is due and who did not come back.
local function due_leaves(now)
  local left = {}
  local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, user in ipairs(due) do
    redis.call('ZREM', KEYS[4], user)
    if tonumber(redis.call('HGET', KEYS[3], user) or '0') <= 0 then
      redis.call('HDEL', KEYS[3], user)
      unlinger(user)
      left[#left + 1] = '{"user":' .. cjson.encode(user) .. '}'
    end
  end
  return left
end

-- Milliseconds until the next leave is due, -1 when none is pending.
local function next_due(now)
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #first == 0 then
    return -1
  end
  return math.max(0, tonumber(first[2]) - now)
end

-- One diff of joins and leaves, as a publication with the reserved event.
-- An empty pub/sub channel: the channel's rule has no events.
local function publish_diff(cmd, pubsub, channel, now, joins, left)
  if pubsub == '' or (#joins == 0 and #left == 0) then
    return
  end
  local payload = '{"joins":[' .. table.concat(joins, ',') .. '],"leaves":[' ..
    table.concat(left, ',') .. ']}'
  local env = cmsgpack.pack({v = 1, ch = channel, ev = '$presence', p = payload, ts = now})
  redis.call(cmd, pubsub, env)
end

-- Keys outlive the entries they hold by a ttl, so that a node's entries are still
-- there to be removed (and their leaves announced) when its refresh is overdue:
-- other nodes pass every ttl / 2.
local function expire_all(ttl, grace, node_key)
  local keep = 2 * ttl
  for i = 1, 6 do
    if i == 4 or i == 6 then
      redis.call('PEXPIRE', KEYS[i], keep + grace)
    else
      redis.call('PEXPIRE', KEYS[i], keep)
    end
  end
  if node_key then
    redis.call('PEXPIRE', node_key, keep)
  end
end

-- Users' online status. KEYS: per user, its online set and its last-seen key.
-- Returns per user {1 if a node's entry is current else 0, last seen ms or ''}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  out[#out + 1] = redis.call('GET', KEYS[i + 1]) or ''
end
return out

-- Reads a channel's presence after removing what crashed nodes left behind (and
-- announcing due leaves, so a read never shows a member a leave was due for).
-- ARGV[1] node key prefix, ARGV[2] PUBLISH or SPUBLISH, ARGV[3] pub/sub channel,
-- ARGV[4] channel, ARGV[5] page size (0: counts only), ARGV[6] cursor ('' for the
-- first page: the last client of the previous page).
-- Returns {clients, users, next cursor or '', member JSON...}.
local now = now_ms()
sweep_nodes(now, ARGV[1])
publish_diff(ARGV[2], ARGV[3], ARGV[4], now, {}, due_leaves(now))
local out = {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[3]), ''}
local limit = tonumber(ARGV[5])
if limit == 0 then
  return out
end
local from = '-'
if ARGV[6] ~= '' then
  from = '(' .. ARGV[6]
end
local clients = redis.call('ZRANGEBYLEX', KEYS[2], from, '+', 'LIMIT', 0, limit + 1)
if #clients > limit then
  clients[#clients] = nil
  out[3] = clients[#clients]
end
if #clients > 0 then
  local members = redis.call('HMGET', KEYS[1], unpack(clients))
  for _, m in ipairs(members) do
    if m then
      out[#out + 1] = m
    end
  end
end
return out

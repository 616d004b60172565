-- A node's periodic pass over one channel: removes the entries of nodes that stopped
-- refreshing, announces due leaves, and (when the node has members here) extends
-- its own entries.
-- ARGV[1] node, ARGV[2] node key prefix, ARGV[3] entry ttl (ms), ARGV[4] grace (ms),
-- ARGV[5] PUBLISH or SPUBLISH, ARGV[6] pub/sub channel ('' when the rule has no events), ARGV[7] channel,
-- ARGV[8] '1' when the node has members here.
-- Returns {missing, ms until the next leave is due or -1}: missing is 1 when the
-- node has members but Redis holds none of its entries (Redis restarted, or the
-- node was cut off longer than the ttl): the node registers them again.
local now = now_ms()
local ttl, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local node_key = ARGV[2] .. ARGV[1]
sweep_nodes(now, ARGV[2])
local missing = 0
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
  if redis.call('EXISTS', node_key) == 0 then
    missing = 1
  end
  expire_all(ttl, grace, node_key)
end
publish_diff(ARGV[5], ARGV[6], ARGV[7], now, {}, due_leaves(now))
return {missing, next_due(now)}

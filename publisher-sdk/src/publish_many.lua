-- Publishes one notification to several channels of one Redis (one shard, or one
-- cluster partition whose names share a slot): the same steps as publish.lua for
-- each target, with the event, payload and id sent once for all of them rather than
-- once per target.
-- KEYS: per target, four keys: history stream, history meta, idempotency marker,
-- the registry of the history rule's channels
-- ARGV[1] event, ARGV[2] payload (JSON text), ARGV[3] message id ('' for none),
-- ARGV[4] publish time (ms), ARGV[5] idempotency window (s, 0: none),
-- ARGV[6] PUBLISH or SPUBLISH, then per target six values: pub/sub channel,
-- channel, history max length (0: no history), history ttl (s), epoch to use if the
-- history has none yet, the rule's budget here (0: none)
-- Returns {receivers, offset} per target, flattened; receivers is -1 for a target
-- whose idempotency key was seen before, -2 for one whose history would exceed its
-- rule's budget (not published).
local idem = tonumber(ARGV[5]) > 0
local out = {}
local targets = #KEYS / 4
local now = math.floor(tonumber(ARGV[4]) / 1000)
for t = 0, targets - 1 do
  local k = t * 4
  local a = 6 + t * 6
  local done = false
  local maxlen = tonumber(ARGV[a + 3])
  local budget = tonumber(ARGV[a + 6])
  if not done and maxlen > 0 and budget > 0 then
    if redis.call('EXISTS', KEYS[k + 2]) == 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now)
      if redis.call('ZCARD', KEYS[k + 4]) >= budget then
        out[#out + 1] = -2
        out[#out + 1] = 0
        done = true
      end
    end
  end
  if idem and not done then
    local prev = redis.call('GET', KEYS[k + 3])
    if prev then
      out[#out + 1] = -1
      out[#out + 1] = tonumber(prev)
      done = true
    end
  end
  if not done then
    local msg = {v = 1, ch = ARGV[a + 2], ev = ARGV[1], p = ARGV[2], ts = tonumber(ARGV[4])}
    if ARGV[3] ~= '' then
      msg.id = ARGV[3]
    end
    local off = 0
    if maxlen > 0 and budget > 0 then
      redis.call('ZADD', KEYS[k + 4], now + tonumber(ARGV[a + 4]), ARGV[a + 2])
      redis.call('EXPIRE', KEYS[k + 4], ARGV[a + 4])
    end
    if maxlen > 0 then
      redis.call('HSETNX', KEYS[k + 2], 'epoch', ARGV[a + 5])
      off = redis.call('HINCRBY', KEYS[k + 2], 'seq', 1)
      msg.off = off
      msg.ep = redis.call('HGET', KEYS[k + 2], 'epoch')
    end
    local env = cmsgpack.pack(msg)
    if maxlen > 0 then
      redis.call('XADD', KEYS[k + 1], 'MAXLEN', maxlen, off .. '-0', 'e', env)
      redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 4])
      redis.call('EXPIRE', KEYS[k + 2], ARGV[a + 4])
    end
    out[#out + 1] = redis.call(ARGV[6], ARGV[a + 1], env)
    out[#out + 1] = off
    if idem then
      redis.call('SET', KEYS[k + 3], off, 'EX', ARGV[5])
    end
  end
end
return out

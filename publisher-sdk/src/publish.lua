-- Publishes one notification atomically: optional idempotency check, optional history
-- append (XADD) and PUBLISH, so the offset in the live message equals the stream
-- entry's. Keys and the pub/sub channel share one hash tag (one Redis Cluster slot).
-- KEYS[1] history stream, KEYS[2] history meta (epoch, seq), KEYS[3] idempotency marker,
-- KEYS[4] the registry of the history rule's channels (see budget below)
-- ARGV[1] pub/sub channel, ARGV[2] channel, ARGV[3] event, ARGV[4] payload (JSON text),
-- ARGV[5] message id ('' for none), ARGV[6] publish time (ms),
-- ARGV[7] history max length (0: no history), ARGV[8] history ttl (s),
-- ARGV[9] epoch to use if the history has none yet, ARGV[10] idempotency window (s, 0: none),
-- ARGV[11] PUBLISH, or SPUBLISH (sharded pub/sub) in a Redis Cluster,
-- ARGV[12] the rule's budget here: channels that may hold history at once (0: none)
-- ARGV[13], ARGV[14] (optional) a conditional publish: the offset and epoch the
-- history must be at ('' for none; epoch '' with offset 0: no history yet)
-- Returns {receivers, offset}; receivers is -1 when the idempotency key was seen
-- before, -2 when the channel would start a history beyond the rule's budget
-- (nothing was published); {-3, offset, epoch} when a conditional publish found the
-- history elsewhere (nothing was published); a conditional publish that went through
-- returns {receivers, offset, epoch}.
local idem = tonumber(ARGV[10]) > 0
if idem then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    return {-1, tonumber(prev)}
  end
end
if ARGV[13] and ARGV[13] ~= '' then
  local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
  local ep = redis.call('HGET', KEYS[2], 'epoch') or ''
  if seq ~= tonumber(ARGV[13]) or (ep ~= ARGV[14] and not (ep == '' and seq == 0)) then
    return {-3, seq, ep}
  end
end
local msg = {v = 1, ch = ARGV[2], ev = ARGV[3], p = ARGV[4], ts = tonumber(ARGV[6])}
if ARGV[5] ~= '' then
  msg.id = ARGV[5]
end
local off = 0
local maxlen = tonumber(ARGV[7])
local budget = tonumber(ARGV[12] or '0')
if maxlen > 0 and budget > 0 then
  -- The rule's channels with history, each until its history expires.
  local now = math.floor(tonumber(ARGV[6]) / 1000)
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    if redis.call('ZCARD', KEYS[4]) >= budget then
      return {-2, 0}
    end
  end
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[8]), ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
if maxlen > 0 then
  redis.call('HSETNX', KEYS[2], 'epoch', ARGV[9])
  off = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  msg.off = off
  msg.ep = redis.call('HGET', KEYS[2], 'epoch')
end
local env = cmsgpack.pack(msg)
if maxlen > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, off .. '-0', 'e', env)
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
local n = redis.call(ARGV[11] or 'PUBLISH', ARGV[1], env)
if idem then
  redis.call('SET', KEYS[3], off, 'EX', ARGV[10])
end
if ARGV[13] and ARGV[13] ~= '' then
  return {n, off, msg.ep or ''}
end
return {n, off}

-- Moves a personal channel's acknowledged position forward (never back), only
-- within the current history epoch and up to its last offset.
-- KEYS[1] history meta, KEYS[2] ack position; ARGV[1] offset, ARGV[2] ttl (s)
-- Returns the stored offset, or -1 when the channel has no history.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return -1
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local want = math.min(tonumber(ARGV[1]), seq)
local cur = redis.call('GET', KEYS[2])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, 1, sep - 1) == epoch then
    local had = tonumber(string.sub(cur, sep + 1))
    if had >= want then
      return had
    end
  end
end
redis.call('SET', KEYS[2], epoch .. ':' .. want, 'EX', ARGV[2])
return want

-- Reads one page of a channel's history: its epoch and latest offset, then the
-- envelopes after an offset, oldest first, at most a count and a byte budget (the
-- first entry always fits, so a page is never empty while entries remain). Read
-- only: an absent history reads as no epoch and offset 0.
-- KEYS[1] history stream, KEYS[2] history meta (epoch, seq)
-- ARGV[1] first stream id to read ('<offset>-0'), ARGV[2] most entries,
-- ARGV[3] byte budget for the envelopes
-- Returns {epoch or false, seq or false, envelope...}
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq')
local out = {meta[1], meta[2]}
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local budget = tonumber(ARGV[3])
local used = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then
      local env = fields[j + 1]
      used = used + #env
      if #out > 2 and used > budget then
        return out
      end
      out[#out + 1] = env
    end
  end
end
return out

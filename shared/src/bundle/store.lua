-- Store a bundle read from PostgreSQL into the cache, unless it was invalidated since the
-- read began (the generation moved): then the caller reads again.
--
-- KEYS[1..3]     definition, sets, generation
-- KEYS[4..]      eligibility key of each set, in the order of the sets in ARGV
-- ARGV[1]        generation seen before reading PostgreSQL
-- ARGV[2]        time to live in milliseconds
-- ARGV[3]        definition JSON
-- ARGV[4..]      per set: set id, choose, variant count, variant ids...
--
-- Replies: {'OK'} | {'STALE'}
if (tonumber(redis.call('GET', KEYS[3])) or 0) ~= tonumber(ARGV[1]) then
  return {'STALE'}
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
redis.call('DEL', KEYS[2])
local at = 4
for k = 4, #KEYS do
  local set, choose, count = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  redis.call('HSET', KEYS[2], set, choose)
  redis.call('DEL', KEYS[k])
  if count > 0 then
    call_each('SADD', KEYS[k], ARGV, at + 3, at + 2 + count)
    redis.call('PEXPIRE', KEYS[k], ttl)
  end
  at = at + 3 + count
end
if #KEYS > 3 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {'OK'}

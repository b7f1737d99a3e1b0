-- Drop a bundle's cache and move its generation on, so that a load already reading
-- PostgreSQL cannot store what it read.
--
-- KEYS: definition, sets, generation, then the eligibility keys to drop
-- ARGV: the cache's time to live (ms)
-- The generation lives as long as an entry would: a load in flight lasts far less, and an
-- id that names no bundle leaves nothing behind for good.
-- Reply: {'OK', keys deleted}
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
local deleted = redis.call('DEL', KEYS[1], KEYS[2])
for k = 4, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[k])
end
return {'OK', deleted}

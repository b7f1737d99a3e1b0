-- Drop a bundle's cache and move its generation on, so that a load already reading
-- PostgreSQL cannot store what it read.
--
-- KEYS: definition, sets, generation, then the eligibility keys to drop
-- Reply: {'OK', keys deleted}
redis.call('INCR', KEYS[3])
local deleted = redis.call('DEL', KEYS[1], KEYS[2])
for k = 4, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[k])
end
return {'OK', deleted}

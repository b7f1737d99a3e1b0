-- Get a cached bundle.
--
-- KEYS: definition, generation
-- Replies: {'OK', definition JSON} | {'MISSING', generation}
local definition = redis.call('GET', KEYS[1])
if definition then
  return {'OK', definition}
end
return {'MISSING', tonumber(redis.call('GET', KEYS[2])) or 0}

-- Hold index: name variants in a holder's index of held variants, once they are held one
-- call at a time on a Redis Cluster (where the index lives in its own slot).
--
-- KEYS[1]  the holder's index (inventory:holder:{H})
-- ARGV[1]  how long the index must live at least, ms (the hold time, plus margin)
-- ARGV[2..] variant ids
--
-- Reply: {'OK'}
for i = 2, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
end
local pttl = redis.call('PTTL', KEYS[1])
local live = tonumber(ARGV[1])
if pttl < live then
  redis.call('PEXPIRE', KEYS[1], live)
end
return {'OK'}

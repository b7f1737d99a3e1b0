-- Replace one discount's eligibility set with the variants the discount version just
-- switched to targets with it, in one step: a reader sees the old set or the new one.
--
-- KEYS[1]  discount:eligibility:{D}
-- ARGV     the variant ids (at least one)
-- Reply: the number of variants
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return #ARGV

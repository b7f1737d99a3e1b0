-- Replace one discount's eligibility set with the variants the discount version just
-- switched to targets with it, in one step: a reader sees the old set or the new one.
--
-- KEYS[1]  discount:eligibility:{D}
-- ARGV     the variant ids (at least one)
-- Reply: the number of variants
redis.call('DEL', KEYS[1])
call_each('SADD', KEYS[1], ARGV)
return #ARGV

-- Read one version's part of a quote, on a Redis Cluster: the pricing pointer, the discount
-- pointer and each version live in different slots, so the caller reads both pointers
-- first, then this once per kind, and joins the two parts into read.lua's layout. A
-- quote is still wholly of one version per kind: a version, once replaced, stays readable
-- for as long as a checkout may have frozen it.
--
-- KEYS: the version's three keys (pricing: lists, prices, bundles; discounts: definitions,
--       by variant, by bundle); none for discounts when none were published
-- ARGV: 'pricing' | 'discounts', number of variants, variant ids, number of bundles,
--       bundle ids
-- Reply (one text, read.lua's lines): pricing: now (epoch ms), then the pricing part;
--                                     discounts: the discount part
--        | 'UNPUBLISHED' when the version's entries are not there (read.lua)
local variants, bundles = asked(2)
local out = {}
if not served(ARGV[1] == 'pricing' and KEYS or nil, ARGV[1] ~= 'pricing' and #KEYS > 0 and KEYS or nil) then
  return 'UNPUBLISHED'
end
if ARGV[1] == 'pricing' then
  out[1] = now_ms()
  read_pricing(out, KEYS, variants, bundles)
else
  read_discounts(out, #KEYS > 0 and KEYS or nil, variants, bundles)
end
return table.concat(out, '\n')

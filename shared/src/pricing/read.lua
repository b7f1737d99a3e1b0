-- Read, in one atomic step, the current pricing and discount versions and exactly the
-- entries a quote needs from them, so a quote is wholly of one version, never a mix.
--
-- KEYS: pricing-ruleset-version, discount-ruleset-version
-- ARGV: pricing stem, discount stem (…:ruleset-bundle-v2:{), the pricing and discount
--       versions whose entries the caller holds (0: none), number of variants, variant ids,
--       number of bundles, bundle ids
--
-- The version keys are derived here from the versions just read; the script runs on one
-- server, which is what makes the read atomic. (On a Redis Cluster the pointers and each
-- version live in different slots: see read_one.lua.)
-- Reply: one text, lines at fixed positions (an empty line where an entry is missing),
-- the entries as stored (`|`-separated fields, decoded by store.rs), so the reply is one
-- bulk string to encode and to parse, however many entries a quote reads:
--   pricing version, discount version, now (epoch ms),
--   number of price lists L, then L × (list id, list),
--   one price entry per variant asked, one bundle entry per bundle asked,
--   one discount id list per variant asked, then per bundle asked,
--   number of discounts D, then D × (discount id, discount)
-- | only the first three lines when the current versions are those the caller holds
-- | 'UNPUBLISHED' (no pricing version, or a pointer naming a version whose entries are
--   not there: another encoding's, or lost)
local pricing = tonumber(redis.call('GET', KEYS[1])) or 0
local discounts = tonumber(redis.call('GET', KEYS[2])) or 0
if pricing == 0 then
  return 'UNPUBLISHED'
end
local out = {pricing, discounts, now_ms()}
if pricing == tonumber(ARGV[3]) and discounts == tonumber(ARGV[4]) then
  return table.concat(out, '\n')
end
local variants, bundles = asked(5)
local function version_keys(stem, version, suffixes)
  local keys = {}
  for i, suffix in ipairs(suffixes) do
    keys[i] = stem .. version .. '}' .. suffix
  end
  return keys
end
local prices = version_keys(ARGV[1], pricing, {':lists', ':prices', ':bundles'})
local offers = discounts > 0 and version_keys(ARGV[2], discounts, {'', ':variants', ':bundles'}) or nil
if not served(prices, offers) then
  return 'UNPUBLISHED'
end
read_pricing(out, prices, variants, bundles)
read_discounts(out, offers, variants, bundles)
return table.concat(out, '\n')

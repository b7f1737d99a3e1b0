-- Read, in one atomic step, the current pricing and discount versions and exactly the
-- entries a quote needs from them, so a quote is wholly of one version, never a mix.
--
-- KEYS: pricing-ruleset-version, discount-ruleset-version
-- ARGV: pricing stem, discount stem (…:ruleset-bundle:{), number of variants, variant ids,
--       number of bundles, bundle ids
--
-- The version keys are derived here from the versions just read; the script runs on one
-- node, which is what makes the read atomic (see README, Cluster).
-- Reply: one JSON string {pricing, discounts, now, lists, prices, bundles,
--        variantDiscounts, bundleDiscounts, orderDiscounts, definitions}
-- (false where an entry is missing) | {'UNPUBLISHED'}
local pricing = tonumber(redis.call('GET', KEYS[1])) or 0
local discounts = tonumber(redis.call('GET', KEYS[2])) or 0
if pricing == 0 then
  return {'UNPUBLISHED'}
end
local t = redis.call('TIME')
local n = tonumber(ARGV[3])
local variants = {unpack(ARGV, 4, 3 + n)}
local m = tonumber(ARGV[4 + n])
local bundles = {unpack(ARGV, 5 + n, 4 + n + m)}

local function hmget(key, fields)
  if #fields == 0 then
    return {}
  end
  return redis.call('HMGET', key, unpack(fields))
end

local p = ARGV[1] .. pricing .. '}'
local out = {
  pricing = pricing,
  discounts = discounts,
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  lists = redis.call('HGETALL', p .. ':lists'),
  prices = hmget(p .. ':prices', variants),
  bundles = hmget(p .. ':bundles', bundles),
  variantDiscounts = {},
  bundleDiscounts = {},
  orderDiscounts = false,
  definitions = {},
}
if discounts > 0 then
  local d = ARGV[2] .. discounts .. '}'
  out.variantDiscounts = hmget(d .. ':variants', variants)
  out.bundleDiscounts = hmget(d .. ':bundles', bundles)
  out.orderDiscounts = redis.call('HGET', d, '_order')
  local ids, seen = {}, {}
  local function collect(list)
    if list then
      for _, id in ipairs(cjson.decode(list)) do
        if not seen[id] then
          seen[id] = true
          ids[#ids + 1] = id
        end
      end
    end
  end
  for _, list in ipairs(out.variantDiscounts) do collect(list) end
  for _, list in ipairs(out.bundleDiscounts) do collect(list) end
  collect(out.orderDiscounts)
  local definitions = hmget(d, ids)
  for i, id in ipairs(ids) do
    out.definitions[#out.definitions + 1] = {id, definitions[i]}
  end
end
return cjson.encode(out)

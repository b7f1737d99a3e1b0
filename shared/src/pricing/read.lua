-- Read, in one atomic step, the current pricing and discount versions and exactly the
-- entries a quote needs from them, so a quote is wholly of one version, never a mix.
--
-- KEYS: pricing-ruleset-version, discount-ruleset-version
-- ARGV: pricing stem, discount stem (…:ruleset-bundle-v2:{), number of variants, variant
--       ids, number of bundles, bundle ids
--
-- The version keys are derived here from the versions just read; the script runs on one
-- node, which is what makes the read atomic (see README, Cluster).
-- Reply: one flat array of fixed positions (false where an entry is missing), the
-- entries as stored (`|`-separated fields, decoded by store.rs):
--   pricing version, discount version, now (epoch ms),
--   number of price lists L, then L × (list id, list),
--   one price entry per variant asked, one bundle entry per bundle asked,
--   one discount id list per variant asked, then per bundle asked,
--   number of discounts D, then D × (discount id, discount)
-- | {'UNPUBLISHED'}
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

local out = {pricing, discounts, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local function append(list)
  for i = 1, #list do
    out[#out + 1] = list[i]
  end
end

local p = ARGV[1] .. pricing .. '}'
local lists = redis.call('HGETALL', p .. ':lists')
out[#out + 1] = #lists / 2
append(lists)
append(hmget(p .. ':prices', variants))
append(hmget(p .. ':bundles', bundles))

local ids, seen = {}, {}
if discounts > 0 then
  local d = ARGV[2] .. discounts .. '}'
  local by_variant = hmget(d .. ':variants', variants)
  local by_bundle = hmget(d .. ':bundles', bundles)
  append(by_variant)
  append(by_bundle)
  local function collect(list)
    if list then
      for id in string.gmatch(list, '[^|]+') do
        if not seen[id] then
          seen[id] = true
          ids[#ids + 1] = id
        end
      end
    end
  end
  for i = 1, #by_variant do collect(by_variant[i]) end
  for i = 1, #by_bundle do collect(by_bundle[i]) end
  collect(redis.call('HGET', d, '_order'))
  local definitions = hmget(d, ids)
  out[#out + 1] = #ids
  for i = 1, #ids do
    out[#out + 1] = ids[i]
    out[#out + 1] = definitions[i]
  end
else
  for _ = 1, #variants + #bundles do
    out[#out + 1] = false
  end
  out[#out + 1] = 0
end
return out

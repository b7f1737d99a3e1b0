-- Shared head of the quote's read scripts (read.lua on one server, read_one.lua on a Redis
-- Cluster): what a quote reads from one pricing version and from one discount version,
-- appended to the reply's lines in the layout read.lua describes.

local function hmget(key, fields)
  return call_each('HMGET', key, fields)
end

-- Appends `list`'s entries to `out`, an empty line where an entry is missing (a nil;
-- no stored entry is empty).
local function append(out, list)
  local n = #out
  for i = 1, #list do
    out[n + i] = list[i] or ''
  end
end

-- The variant ids and bundle ids of ARGV from position `at`: a count, the ids, a count, the
-- ids.
local function asked(at)
  local n = tonumber(ARGV[at])
  local m = tonumber(ARGV[at + 1 + n])
  local variants, bundles = {}, {}
  for i = 1, n do
    variants[i] = ARGV[at + i]
  end
  for i = 1, m do
    bundles[i] = ARGV[at + 1 + n + i]
  end
  return variants, bundles
end

-- Whether a version's entries are there: every hash a quote reads by field (pricing: prices
-- and bundles; discounts, when `offers` names a version: definitions, by variant and by
-- bundle) exists once published, since each carries the `:hashtable` field. One lost
-- alone would read as "no entry": no price, or no discount.
local function served(prices, offers)
  if prices and redis.call('EXISTS', prices[2], prices[3]) ~= 2 then
    return false
  end
  return not offers or redis.call('EXISTS', offers[1], offers[2], offers[3]) == 3
end

-- A pricing version's part: L, L × (list id, list), a price per variant, an entry per
-- bundle. `keys`: the version's lists, prices and bundles hashes.
local function read_pricing(out, keys, variants, bundles)
  local lists = redis.call('HGETALL', keys[1])
  out[#out + 1] = #lists / 2
  append(out, lists)
  append(out, hmget(keys[2], variants))
  append(out, hmget(keys[3], bundles))
end

-- A discount version's part: a discount id list per variant, then per bundle, then D, and
-- D × (discount id, discount). `keys`: the version's definitions, by-variant and
-- by-bundle hashes; none (no discounts published): nothing applies.
local function read_discounts(out, keys, variants, bundles)
  if not keys then
    for _ = 1, #variants + #bundles do
      out[#out + 1] = ''
    end
    out[#out + 1] = 0
    return
  end
  local ids, seen = {}, {}
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
  local by_variant = hmget(keys[2], variants)
  local by_bundle = hmget(keys[3], bundles)
  append(out, by_variant)
  append(out, by_bundle)
  for i = 1, #by_variant do collect(by_variant[i]) end
  for i = 1, #by_bundle do collect(by_bundle[i]) end
  collect(redis.call('HGET', keys[1], '_order'))
  local definitions = hmget(keys[1], ids)
  local n = #out
  out[n + 1] = #ids
  for i = 1, #ids do
    out[n + 2 * i] = ids[i]
    out[n + 2 * i + 1] = definitions[i] or ''
  end
end

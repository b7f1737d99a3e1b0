-- Merge, step 2 of 3, on the customer's cart: add the claimed lines, once. The marker
-- `m:<anonymous cart>` is set in the same script, so a replayed or raced merge adds nothing;
-- it keeps the lines dropped and capped, which a replay answers again.
--
-- KEYS: customer's cart, its checkout lock
-- ARGV: anonymous cart id, currency, ttl_ms, max lines, max quantity, customer id,
--       the version If-Match expects of the customer's cart ('' for any),
--       then per line: line id, definition JSON, quantity
--
-- Lines are added up to the quantity limit (those cut short are named in the reply as
-- capped); lines beyond the line limit are dropped and named in the reply.
-- Replies: cart_snapshot 'OK' (with dropped and capped lines) | {'CURRENCY', customer
-- cart's currency} | {'LOCKED', session} | {'VERSION', customer cart's version}
local key, from, currency = KEYS[1], ARGV[1], ARGV[2]
local ttl, max_lines, max_qty = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local expected = ARGV[7]
if redis.call('HEXISTS', key, 'm:' .. from) == 1 then
  return merged_snapshot(key, from)
end
local holder = redis.call('GET', KEYS[2])
if holder then
  return {'LOCKED', holder}
end
-- Every cart has a version; a customer's cart not yet written is at 0, as its GET shows it.
local version = redis.call('HGET', key, 'version')
if expected ~= '' and (version or '0') ~= expected then
  return {'VERSION', tonumber(version or '0')}
end
if not version then
  create(key, currency, ARGV[6], ttl)
end
local own = redis.call('HGET', key, 'currency')
if own ~= currency then
  if tonumber(redis.call('HGET', key, 'lines')) > 0 then
    return {'CURRENCY', own}
  end
  redis.call('HSET', key, 'currency', currency)
end
local dropped, capped = {}, {}
for i = 8, #ARGV, 3 do
  local line, definition, qty = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local current = tonumber(redis.call('HGET', key, 'q:' .. line)) or 0
  local room = max_qty - current
  if qty > room then
    qty = room
    capped[#capped + 1] = line
  end
  if qty > 0 and add_line(key, line, definition, qty, max_lines, max_qty) then
    dropped[#dropped + 1] = line
  end
end
redis.call('HSET', key, 'm:' .. from, merge_marker(dropped, capped))
redis.call('HINCRBY', key, 'version', 1)
redis.call('HSET', key, 'written', now_written())
redis.call('PEXPIRE', key, ttl)
return cart_snapshot(key, 'OK', dropped, nil, capped)

-- Read a cart for pricing: its fields as one text, each field and its value on lines of
-- their own, so the reply is one bulk string to encode and to parse, however many lines
-- the cart holds. No field or value holds a newline (ids, numbers, a currency, and the
-- lines' definitions as compact JSON).
--
-- With the two ruleset version pointers as KEYS[2] and KEYS[3] (a standalone Redis, where
-- one script may read keys of any slot), the text starts with the current pricing and
-- discount versions and the clock, read in the same atomic step, so a quote whose entries
-- the server holds for those versions needs no other round trip (pricing/cache.rs).
--
-- KEYS: cart[, pricing-ruleset-version, discount-ruleset-version]
-- Reply: [pricing version, discount version, now (epoch ms),] then field, value, field,
--        value… joined by newlines; no fields when there is no cart
local out = {}
if #KEYS == 3 then
  out = {tonumber(redis.call('GET', KEYS[2])) or 0, tonumber(redis.call('GET', KEYS[3])) or 0, now_ms()}
end
local fields = redis.call('HGETALL', KEYS[1])
local n = #out
for i = 1, #fields do
  out[n + i] = fields[i]
end
return table.concat(out, '\n')

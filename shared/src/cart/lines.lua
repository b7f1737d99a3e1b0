-- Read a cart for pricing: its fields as one text, each field and its value on lines of
-- their own, so the reply is one bulk string to encode and to parse, however many lines
-- the cart holds. No field or value holds a newline (ids, numbers, a currency, and the
-- lines' definitions as compact JSON).
--
-- KEYS: cart
-- Reply: field, value, field, value… joined by newlines; empty when there is no cart
return table.concat(redis.call('HGETALL', KEYS[1]), '\n')

-- The frozen cart an order records is compared by its lines, through a digest of bounded
-- size. 0010 put the units per variant (cart_demand) in the unique index whole: a b-tree
-- entry holds at most 2704 bytes, so a cart of some 70 variants with long ids could not be
-- ordered at all (SQLSTATE 54000 after the payment was taken); and units per variant told
-- a bundle line from loose lines of the same variants no better than not at all, so a
-- cart rewound under other lines was refused as the one ordered before.
--
-- cart_lines is frozen_cart_lines() of the order's lines: each line's definition (a
-- variant, or a bundle with its choices) and quantity, in one order, digested. Two
-- sessions that froze the same cart froze the same lines; a cart with other lines is
-- another cart. The order statement and the refusal's look-up both call the function, so
-- there is one definition of the key.
CREATE FUNCTION frozen_cart_lines(lines jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT md5(COALESCE(string_agg(l.definition::text || ' x' || l.quantity, E'\n'
                                   ORDER BY l.definition::text, l.quantity), ''))
    FROM jsonb_to_recordset(lines) AS l(definition jsonb, quantity bigint)
$$;

DROP INDEX orders_one_per_frozen_cart;
ALTER TABLE orders ADD COLUMN cart_lines text;

-- Orders written before this migration: their session's metadata kept the cart as frozen
-- (since the sessions that froze a generation and a version), their lines are in
-- order_lines. Orders of older sessions stay uncompared (NULL).
UPDATE orders o
SET cart_generation = COALESCE(o.cart_generation, (s.metadata->>'cartGeneration')::bigint),
    cart_version = COALESCE(o.cart_version, (s.metadata->>'cartVersion')::bigint)
FROM checkout_sessions s
WHERE s.id = o.checkout_session_id
  AND jsonb_typeof(s.metadata->'cartGeneration') = 'number'
  AND jsonb_typeof(s.metadata->'cartVersion') = 'number';

UPDATE orders o
SET cart_lines = frozen_cart_lines(
        (SELECT jsonb_agg(jsonb_build_object('definition', ol.definition, 'quantity', ol.quantity))
         FROM order_lines ol WHERE ol.order_id = o.id))
WHERE o.cart_generation IS NOT NULL AND o.cart_version IS NOT NULL;

-- A cart ordered twice before the index could see it keeps its first order compared.
UPDATE orders o
SET cart_lines = NULL
FROM (
    SELECT id, row_number() OVER (PARTITION BY cart_ref, cart_generation, cart_version, cart_lines
                                  ORDER BY created_at, id) AS nth
    FROM orders WHERE cart_lines IS NOT NULL
) d
WHERE d.id = o.id AND d.nth > 1;

ALTER TABLE orders DROP COLUMN cart_demand;

CREATE UNIQUE INDEX orders_one_per_frozen_cart
    ON orders (cart_ref, cart_generation, cart_version, cart_lines);

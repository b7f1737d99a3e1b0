-- The PostgreSQL baseline: how most commerce platforms reserve stock, a row lock on the
-- variant's stock row, a check, the held total raised and a hold row written.
\set cart random(1, 2000000000)
BEGIN;
SELECT on_hand, reserved FROM bench_stock WHERE variant_id = 'hot' FOR UPDATE;
UPDATE bench_stock SET reserved = reserved + 1 WHERE variant_id = 'hot' AND on_hand - reserved >= 1;
INSERT INTO bench_holds (cart_id, variant_id, quantity, expires_at)
VALUES ('pg-' || :cart, 'hot', 1, now() + interval '10 minutes');
COMMIT;

-- Read a session (expiring it if it is due), with the values of the extra keys asked for
-- (each carries the session's hash tag).
--
-- KEYS: session, then any extra keys to read with it
-- ARGV: the states before payment, joined by ','
-- Replies: {'OK' | 'EXPIRED_NOW', extra values…, session fields…} | {'NOT_FOUND'}
local read = read_session(KEYS[1])
if not read then
  return {'NOT_FOUND'}
end
local clock
local function now()
  clock = clock or now_ms()
  return clock
end
if expire_if_due(KEYS[1], read, now, ARGV[1]) then
  return session_snapshot(KEYS[1], 'EXPIRED_NOW', 2)
end
return session_snapshot(KEYS[1], 'OK', 2)

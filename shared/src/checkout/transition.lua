-- Compare-and-set a session's state: move to ARGV[1] only from one of the states in
-- ARGV[2] (the sources the Rust state machine allows), optionally setting fields and
-- moving the deadline.
--
-- KEYS: session, metadata
-- ARGV: target state, source states joined by ',', new deadline in epoch ms of the Redis
--       clock ('' = keep the deadline), how long the record outlives its deadline (ms),
--       then field, value pairs to set with the move
-- Replies: {'OK' | 'SAME' (already there) | 'STATE' (refused: see its state)
--           | 'EXPIRED_NOW' (it expired instead), session JSON} | {'NOT_FOUND'}
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return {'NOT_FOUND'}
end
local now = now_ms()
if expire_if_due(key, now) then
  return snapshot(key, 'EXPIRED_NOW')
end
local state = redis.call('HGET', key, 'state')
if state == ARGV[1] then
  return snapshot(key, 'SAME')
end
local allowed = false
for source in string.gmatch(ARGV[2], '[^,]+') do
  if source == state then
    allowed = true
  end
end
if not allowed then
  return snapshot(key, 'STATE')
end
move(key, ARGV[1], now)
for i = 5, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
if ARGV[3] ~= '' then
  local deadline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
  redis.call('HSET', key, 'deadline', deadline)
  redis.call('PEXPIREAT', key, deadline + keep)
  redis.call('PEXPIREAT', KEYS[2], deadline + keep)
end
return snapshot(key, 'OK')

-- Begin an idempotent request.
--
-- KEYS: idempotency:{scope}:{key}
-- ARGV: request fingerprint, this attempt's id (fresh per call; also the resume token of a
--       new record), lease in ms (how long an unfinished request keeps others waiting
--       before one may take over), and the instant (epoch ms, the caller's clock) past
--       which the caller no longer waits for this reply, or 0
--
-- The record is a hash: fingerprint, state ('pending' | 'done'), resume token (stable
-- across retries, so a retry continues the same work), the attempt holding the lease,
-- lease deadline, and once done the status and body of the answer.
-- A call that reaches Redis after its caller stopped waiting (it sat in a paused server)
-- takes no lease: nobody would do the work, and retries would wait for nothing. The
-- caller's clock may run behind Redis's; a caller that does get 'LATE' back is alive and
-- simply asks again with 0.
-- Replies: {'NEW', token} | {'RESUME', token} (a lease ran out: continue that work)
--        | {'IN_FLIGHT', ms left of the lease} | {'MISMATCH'} | {'DONE', status, body, headers}
--        | {'LATE'}
local now = now_ms()
local lease = tonumber(ARGV[3])
local not_after = tonumber(ARGV[4]) or 0
if not_after > 0 and now > not_after then
  return {'LATE'}
end
local record = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'token', 'lease', 'status', 'body', 'headers')
if not record[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'pending', 'token', ARGV[2], 'attempt', ARGV[2],
    'lease', now + lease)
  redis.call('PEXPIRE', KEYS[1], lease * 10)
  return {'NEW', ARGV[2]}
end
if record[1] ~= ARGV[1] then
  return {'MISMATCH'}
end
if record[2] == 'done' then
  return {'DONE', tonumber(record[5]), record[6], record[7] or ''}
end
if tonumber(record[4]) > now then
  return {'IN_FLIGHT', tonumber(record[4]) - now}
end
redis.call('HSET', KEYS[1], 'lease', now + lease, 'attempt', ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 10)
return {'RESUME', record[3]}

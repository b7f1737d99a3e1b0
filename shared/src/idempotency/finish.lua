-- Finish an idempotent request: keep its answer for the retention time, or forget the
-- attempt (a failure worth retrying) so the next try starts over with the same token.
--
-- KEYS: idempotency:{scope}:{key}
-- ARGV: token, 'keep' | 'forget', status, body, retention in ms, headers (one
--       "name: value" a line)
-- Reply: {'OK'} | {'LOST'} (the record now belongs to another attempt)
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return {'LOST'}
end
if ARGV[2] == 'keep' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'body', ARGV[4], 'headers', ARGV[6] or '')
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
else
  redis.call('HSET', KEYS[1], 'lease', 0)
end
return {'OK'}

-- Marks an ended session's release as past its PostgreSQL steps: its end is recorded
-- there and its intent's cancel is owed in the outbox. A release cut short after them
-- (a slow PostgreSQL, the request's deadline) is resumed by the next read or the sweep
-- from the holds on, and does not run them again. Only while the session is still
-- `releasing`: a release already finished, or a session Redis no longer has, is left as it
-- is (no key is made).
--
-- KEYS: the session
-- Replies: 'OK'
if redis.call('HEXISTS', KEYS[1], 'releasing') == 1 then
  redis.call('HSET', KEYS[1], 'releasing', 'postgres')
end
return 'OK'

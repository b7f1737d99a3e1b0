-- Moves a key restored under its staging name to its own name, in one step: the last
-- phase of `backup::restore`, run only once every entry of the backup was staged.
-- KEYS[1]: the staging name; KEYS[2]: the key's own name (the same hash slot).
-- ARGV[1]: the key's time to live in milliseconds, 0 for none.
-- DUMP/RESTORE/DEL rather than RENAME: the same result within the commands the app's
-- Redis user already has (README, "Redis users"). A staging key that is gone (it outlived
-- its staging time to live) is an error, and the key's own name is left as it was.
local payload = redis.call('DUMP', KEYS[1])
if not payload then
  return redis.error_reply('STAGED_KEY_GONE ' .. KEYS[1] .. ' no longer exists')
end
redis.call('RESTORE', KEYS[2], ARGV[1], payload, 'REPLACE')
redis.call('DEL', KEYS[1])
return 1

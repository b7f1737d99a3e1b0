-- Moves keys restored under their staging names to their own names, in one step: the last
-- phase of `backup::restore`, run only once every entry of the backup was staged.
-- KEYS: pairs of a staging name and the key's own name (all in one hash slot): a variant's
-- holds and their quantities move together, so no script ever meets one without the other.
-- ARGV: per pair, the key's time to live in milliseconds, 0 for none.
-- DUMP/RESTORE/DEL rather than RENAME: the same result within the commands the app's
-- Redis user already has (README, "Redis users"). A staging key that is gone (it outlived
-- its staging time to live) is an error, and no key of the call is moved.
local payloads = {}
for i = 1, #KEYS, 2 do
  payloads[i] = redis.call('DUMP', KEYS[i])
  if not payloads[i] then
    return redis.error_reply('STAGED_KEY_GONE ' .. KEYS[i] .. ' no longer exists')
  end
end
for i = 1, #KEYS, 2 do
  redis.call('RESTORE', KEYS[i + 1], ARGV[(i + 1) / 2], payloads[i], 'REPLACE')
  redis.call('DEL', KEYS[i])
end
return 1

-- Switch a ruleset to a freshly built version, only forward, and announce it.
--
-- KEYS[1]   the ruleset's version key (pricing-ruleset-version / discount-ruleset-version)
-- KEYS[2..] the new version's keys (built with a safety expiry, made permanent here)
-- ARGV      new version, the stem of version keys (…:ruleset-bundle:{), the key suffixes
--           joined by ',', how long the replaced version stays readable (ms), the channel
--
-- A publish that finishes after a newer one is refused: versions never go back, and the
-- replaced version's keys expire after the given time (checkouts may have frozen it).
-- Replies: {'OK', previous version} | {'STALE', current version}
local version = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if version <= current then
  return {'STALE', current}
end
redis.call('SET', KEYS[1], version)
for k = 2, #KEYS do
  redis.call('PERSIST', KEYS[k])
end
-- On a Redis Cluster the caller passes no suffixes (and no version keys): the versions'
-- keys live in other slots, and the caller persists and expires them itself.
if current > 0 and ARGV[3] ~= '' then
  for suffix in string.gmatch(',' .. ARGV[3], ',([^,]*)') do
    redis.call('PEXPIRE', ARGV[2] .. current .. '}' .. suffix, tonumber(ARGV[4]))
  end
end
redis.call('PUBLISH', ARGV[5], version)
return {'OK', current}

-- GCRA (the generic cell rate algorithm): one decision of a rate limit, on the Redis clock.
--
-- KEYS[1]  the subject's bucket: its theoretical arrival time (TAT), epoch microseconds
-- ARGV[1]  the emission interval in microseconds (a minute divided by the rate per minute)
-- ARGV[2]  the burst: how many requests a full bucket lets through at once
--
-- A request is allowed when the TAT, moved on by one interval, lies at most `burst`
-- intervals ahead of now; the new TAT is then stored, living until the bucket is full
-- again (so an idle subject costs no memory). A refused request writes nothing.
--
-- Reply: {'OK', 0} | {'LIMITED', milliseconds until the next request is allowed}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then
  return {'LIMITED', math.ceil((allowed_at - now) / 1000)}
end
-- %.0f: the TAT (about 1.8e15) is an exact integer in a double, but tostring would print
-- it in exponent notation.
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {'OK', 0}

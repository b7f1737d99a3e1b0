-- wrk: every request reserves 1 unit of a random one of BENCH_VARIANTS variants
-- (var-1 … var-N) for a new holder, so the load spreads over the variants' hash slots
-- (over every master of a Redis Cluster), held for 1 s so that 1,000 variants of 100 units
-- last a run (expired holds are purged by the next call on the variant). The admin token
-- BENCH_TOKEN (default "bench").
local counter = 0
local token = os.getenv("BENCH_TOKEN") or "bench"
local variants = tonumber(os.getenv("BENCH_VARIANTS") or "1000")
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init()
  math.randomseed(thread_id * 7919 + os.time())
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"cartId":"spread-%d-%d","items":[{"variantId":"var-%d","quantity":1}],"ttlSeconds":1}',
    thread_id, counter, math.random(1, variants))
  return wrk.format("POST", "/v1/inventory/reservations",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

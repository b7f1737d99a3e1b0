-- wrk: every request reserves 1 unit of the hot variant for a new cart, so each one is a
-- real hold (the holds set grows as on a flash sale).
-- Direct reservations are for trusted callers: the admin token BENCH_TOKEN (default
-- "bench", what scripts/bench configures).
-- `thread_id` is a global set per thread by setup(); a local would shadow it.
local counter = 0
local token = os.getenv("BENCH_TOKEN") or "bench"
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"cartId":"bench-%d-%d","items":[{"variantId":"%s","quantity":1}],"ttlSeconds":600}',
    thread_id, counter, os.getenv("BENCH_VARIANT") or "var-1")
  return wrk.format("POST", "/v1/inventory/reservations",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

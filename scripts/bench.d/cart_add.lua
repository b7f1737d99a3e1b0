-- wrk: every request adds 1 unit of one of 10 variants to one of the carts listed in
-- BENCH_CARTS (comma-separated), round robin, so carts see concurrent adds.
local carts = {}
for id in string.gmatch(os.getenv("BENCH_CARTS") or "", "[^,]+") do
  carts[#carts + 1] = id
end
local counter = 0

function request()
  counter = counter + 1
  local cart = carts[(counter % #carts) + 1]
  local body = string.format('{"variantId":"var-%d","quantity":1}', (counter % 10) + 1)
  return wrk.format("POST", "/v1/carts/" .. cart .. "/items", {["Content-Type"] = "application/json"}, body)
end

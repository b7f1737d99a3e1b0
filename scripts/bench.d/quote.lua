-- wrk: every request quotes the one cart BENCH_CART (20 lines). With BENCH_GROUP set it
-- quotes for that customer group, naming it with the admin token BENCH_TOKEN (only the
-- admin token may name a group), so group price lists, their parents and quantity breaks
-- are all walked.
local cart = os.getenv("BENCH_CART") or ""
local group = os.getenv("BENCH_GROUP") or ""
local token = os.getenv("BENCH_TOKEN") or ""

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if group ~= "" then
  wrk.body = string.format('{"cartId":"%s","customerGroup":"%s"}', cart, group)
  wrk.headers["Authorization"] = "Bearer " .. token
else
  wrk.body = string.format('{"cartId":"%s"}', cart)
end

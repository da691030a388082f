-- The run-owned RNG: seeded streams are reproducible, draws lie in range, tensors filled.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

H.section("seeding")
local a, b, c = qf.rng(42), qf.rng(42), qf.rng(43)
local same, differ = true, false
for _ = 1, 100 do
  local x = a:uniform()
  same = same and x == b:uniform()
  differ = differ or x ~= c:uniform()
end
check(same, "same seed gives the same stream")
check(differ, "another seed gives another stream")
-- qf.rng() takes the run's seed (this test runs with the default seed 0)
check_eq(qf.seed(), 0)
check_eq(qf.rng():uniform(), qf.rng(0):uniform(), "qf.rng() is seeded from the run seed")

H.section("ranges and moments")
local g = qf.rng(7)
local lo_hit, hi_hit, ok = false, false, true
for _ = 1, 2000 do
  local v = g:randint(3, 5)
  ok = ok and math.type(v) == "integer" and v >= 3 and v <= 5
  lo_hit = lo_hit or v == 3
  hi_hit = hi_hit or v == 5
end
check(ok and lo_hit and hi_hit, "randint(3, 5) covers [3, 5] with integers")
local u = g:uniform(-2, -1)
check(u >= -2 and u < -1, "uniform(lo, hi) in range")
local t = g:randn({200, 50})
check_eq(t:shape(), {200, 50})
check(math.abs(t:mean()) < 0.03, "randn mean ~ 0")
check(math.abs(t:norm() ^ 2 / t:numel() - 1) < 0.05, "randn variance ~ 1")
local r = g:rand(1000)
check(r:min() >= 0 and r:max() < 1, "rand in [0, 1)")
check(math.abs(r:mean() - 0.5) < 0.05, "rand mean ~ 0.5")

H.section("errors")
check_error(function() g:randint(5, 1) end, "empty range")
check_error(function() qf.rng("x") end, "bad argument #1 to 'rng' %(integer expected, got string%)")
check_error(function() g:randn({-1}) end, "negative")

H.summary()

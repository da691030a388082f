-- The cost of a Lua call into the tensor library: the same op on a 1-element tensor (pure call
-- overhead: argument checks, the trampoline, a new handle) and on 4096×4096 (docs/benchmarks.md).
--   build/qforge run bench/lua_call_overhead.lua
local small, big = qf.tensor{ 1 }, qf.zeros{ 4096, 4096 }
local function per_call(t, n)
  local t0 = qf.now()
  for _ = 1, n do local _ = qf.abs(t) end
  return (qf.now() - t0) / n
end
per_call(small, 1000)
local s = per_call(small, 100000)
local b = per_call(big, 5)
print(string.format("qf.abs: %.2f µs per call on 1 element; %.1f ms on 4096×4096; overhead %.4f%% of the big call", s * 1e6, b * 1e3, 100 * s / b))
qf.record("call_us", s * 1e6)
qf.record("big_ms", b * 1e3)

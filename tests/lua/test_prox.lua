-- recipes/examples/prox.lua: the row-wise prox of t·‖·‖∞ against θ found by bisection on
-- Σ max(|v_i| − θ, 0) = t, hand-computed rows, rows already inside the ℓ1 ball, ties, and the prox's
-- defining optimality (it minimizes ½‖x − v‖² + t‖x‖∞ against random perturbations).
local H = dofile("tests/lua/harness.lua")
local check, check_eq = H.check, H.check_eq
local prox = dofile("recipes/examples/prox.lua")

-- hand-computed: v = (3, -1, 0.5), t = 1.5: θ with (3 − θ) = 1.5 → θ = 1.5 (only |3| above it)
local X, theta = prox.linf(qf.tensor{ { 3, -1, 0.5 } }, 1.5)
check_eq(theta:get(1, 1), 1.5, 1e-6)
check_eq(X:to_table(), { { 1.5, -1, 0.5 } }, 1e-6)
-- t = 3: (3 − θ) + (1 − θ) = 3 → θ = 0.5 (and 0.5 is not above it)
X = prox.linf(qf.tensor{ { 3, -1, 0.5 } }, 3)
check_eq(X:to_table(), { { 0.5, -0.5, 0.5 } }, 1e-6)
-- ‖v‖₁ ≤ t: the prox is 0
X = prox.linf(qf.tensor{ { 0.2, -0.1 }, { 2, 2 } }, 0.5)
check_eq(X:to_table(), { { 0, 0 }, { 1.75, 1.75 } }, 1e-6, "row 1 inside the ball → 0; row 2 ties clipped together")

local function obj(x, v, t)  -- ½‖x − v‖² + t‖x‖∞, per row (Lua numbers)
  local s, m = 0, 0
  for i = 1, #x do s = s + 0.5 * (x[i] - v[i]) ^ 2; m = math.max(m, math.abs(x[i])) end
  return s + t * m
end
local rng = qf.rng(3)
local V = rng:randn(6, 9)
local t = 0.8
local P, th = prox.linf(V, t)
local Vt, Pt = V:to_table(), P:to_table()
for r = 1, 6 do
  -- bisection for θ on Σ max(|v| − θ, 0) = t
  local lo, hi = 0, 0
  for _, x in ipairs(Vt[r]) do hi = math.max(hi, math.abs(x)) end
  local l1 = 0
  for _, x in ipairs(Vt[r]) do l1 = l1 + math.abs(x) end
  local want = 0
  if l1 > t then
    for _ = 1, 200 do
      local mid = (lo + hi) / 2
      local mass = 0
      for _, x in ipairs(Vt[r]) do mass = mass + math.max(math.abs(x) - mid, 0) end
      if mass > t then lo = mid else hi = mid end
    end
    want = (lo + hi) / 2
  end
  check_eq(th:get(r, 1), want, 1e-5, "θ of row " .. r .. " by bisection")
  local best = obj(Pt[r], Vt[r], t)
  for _ = 1, 50 do
    local y = {}
    for i = 1, #Pt[r] do y[i] = Pt[r][i] + 0.01 * (rng:uniform() - 0.5) end
    if obj(y, Vt[r], t) < best - 1e-9 then check(false, "a perturbation beats the prox on row " .. r) break end
  end
end
H.summary()

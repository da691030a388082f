-- m:multiple_choice and qf.read_multiple_choice on stories260K (engine/eval/multiple_choice.h):
-- the result table, 1-based indices, file vs table input, options, and the error messages.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local MODEL = "../shared/models/stories260K"
local TASK = "tests/data/stories_mc.jsonl"
local TASK_CTX = "tests/data/stories_mc_contexts.jsonl"
local m = qf.load_model(MODEL)

H.section("a task file")
local r = m:multiple_choice(TASK)
check_eq(r.n, 12)
check_eq(r.requests, 34)
check_eq(r.truncated, 0)
check_eq(#r.items, 12)
check(r.acc >= 0 and r.acc <= 1 and r.acc_norm >= 0 and r.acc_norm <= 1, "acc and acc_norm in [0, 1]")
check(type(r.protocol) == "string" and r.protocol:find("lm-eval multiple_choice", 1, true), "protocol line")
check(r.seconds >= 0, "seconds")
local hits, hits_norm = 0, 0
for i, it in ipairs(r.items) do
  check(#it.loglik >= 2 and #it.loglik == #it.tokens, "item " .. i .. ": one loglik and token count per choice")
  local best, best_norm = 1, 1
  for c = 1, #it.loglik do
    check(it.loglik[c] < 0, "item " .. i .. ": log-likelihoods are negative")
    if it.loglik[c] > it.loglik[best] then best = c end
  end
  check_eq(it.pred, best, "item " .. i .. ": pred is the first argmax, 1-based")
  check(it.pred_norm >= 1 and it.pred_norm <= #it.loglik, "pred_norm is 1-based")
  check(it.label >= 1 and it.label <= #it.loglik, "label is 1-based")
  check_eq(it.truncated, 0)
  if it.pred == it.label then hits = hits + 1 end
  if it.pred_norm == it.label then hits_norm = hits_norm + 1 end
end
check_eq(r.acc, hits / 12, 1e-12)
check_eq(r.acc_norm, hits_norm / 12, 1e-12)
local p = r.acc
if p > 0 and p < 1 then check_eq(r.acc_stderr, math.sqrt(p * (1 - p) * 12 / 11 / 12), 1e-12, "stderr: sample sd / sqrt(n)") end
print(string.format("stories260K on %s: acc %.4f ± %.4f, acc_norm %.4f ± %.4f", TASK, r.acc, r.acc_stderr, r.acc_norm,
                    r.acc_norm_stderr))

H.section("qf.read_multiple_choice and table input")
local items = qf.read_multiple_choice(TASK)
check_eq(#items, 12)
check_eq(items[1], { context = "Once upon a", choices = { "time", "spreadsheet", "quantum" }, label = 1 })
check_eq(items[2].label, 2, "JSONL label 1 is Lua label 2")
local rt = m:multiple_choice(items)
for i = 1, 12 do check_eq(rt.items[i].loglik, r.items[i].loglik, "item " .. i .. ": the table gives the file's values") end
check_eq(#qf.read_multiple_choice(TASK, { max_items = 4 }), 4)
local r5 = m:multiple_choice(TASK, { max_items = 5 })
check_eq(r5.n, 5)
check_eq(m:multiple_choice(items, { max_items = 5 }).n, 5)
for i = 1, 5 do check_eq(r5.items[i].loglik, r.items[i].loglik, 1e-4, "item " .. i .. ": max_items moves a value by f32 rounding at most") end

H.section("the contexts form")
local ic = qf.read_multiple_choice(TASK_CTX)
check_eq(ic[1].continuation, "swing.")
check_eq(#ic[1].contexts, 2)
check_eq(ic[3].label, 2)
local rc = m:multiple_choice(ic)
check_eq(rc.n, 3)
check_eq(m:multiple_choice(TASK_CTX).items[2].loglik, rc.items[2].loglik)

H.section("delimiter")
local one = { { context = "Once upon a", choices = { "time", "spreadsheet" }, label = 1 } }
local d1 = m:multiple_choice(one)
local d2 = m:multiple_choice(one, { delimiter = " " })
local d3 = m:multiple_choice(one, { delimiter = "" })
check_eq(d1.items[1].loglik, d2.items[1].loglik, "the default delimiter is a space")
check(d3.items[1].loglik[1] ~= d1.items[1].loglik[1], "no delimiter scores another continuation")
check(d3.protocol:find('delimiter ""', 1, true), "the protocol names the delimiter")

H.section("errors")
check_error(function() return m:multiple_choice(TASK, { max_item = 2 }) end,
            "unknown option 'max_item' to 'multiple_choice' (known: max_items, delimiter)")
check_error(function() return m:multiple_choice(TASK, { max_items = -1 }) end, "max_items must be >= 0")
check_error(function() return m:multiple_choice(TASK, { delimiter = 1 }) end, "bad option 'delimiter' to 'multiple_choice'")
check_error(function() return m:multiple_choice(42) end, "path of a JSONL task file or table of items expected, got number")
check_error(function() return m:multiple_choice("tests/data/no_such.jsonl") end, "no_such.jsonl")
check_error(function() return m:multiple_choice({}) end, "multiple_choice: the items table is empty or not a list")
check_error(function() return m:multiple_choice({ context = "a", choices = { "b", "c" }, label = 1 }) end, "not a list")
check_error(function() return m:multiple_choice({ "x" }) end, "multiple_choice: items[1] must be a table")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "c" }, label = 3 } }) end,
            "multiple_choice: items[1]: field 'label': 3 is out of range for 2 options (1..2)")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "c" }, label = 0 } }) end,
            "field 'label': 0 is out of range for 2 options (1..2)")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "c" }, label = 1.5 } }) end,
            "field 'label' must be an integer (1-based index into 'choices'), got number")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "c" } } }) end, "field 'label' is missing")
check_error(function() return m:multiple_choice({ { choices = { "b", "c" }, label = 1 } }) end, "field 'context' is missing")
check_error(function() return m:multiple_choice({ { context = 5, choices = { "b", "c" }, label = 1 } }) end,
            "items[1]: field 'context' must be a string, got number")
check_error(function() return m:multiple_choice({ { context = "a", choices = "b", label = 1 } }) end,
            "field 'choices' must be a list of strings, got string")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", 2 }, label = 1 } }) end,
            "field 'choices[2]' must be a string, got number")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b" }, label = 1 } }) end,
            "field 'choices' has 1 entry; an item needs at least 2")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "" }, label = 1 } }) end,
            "field 'choices[2]' is empty")
check_error(function() return m:multiple_choice({ { context = "a", choices = { "b", "c" }, label = 1, gold = 1 } }) end,
            "items[1]: unknown field 'gold' (known: context, choices, label; or contexts, continuation, label)")
check_error(function() return m:multiple_choice({ one[1], { context = "a", contexts = { "b", "c" }, label = 1 } }) end,
            "items[2]: fields 'context' and 'contexts' together")
check_error(function() return m:multiple_choice({ { contexts = { "b", "c" }, label = 1 } }) end, "field 'continuation' is missing")
check_error(function() return qf.read_multiple_choice(TASK, { max_items = "x" }) end, "bad option 'max_items' to 'read_multiple_choice'")
check_error(function() return qf.read_multiple_choice(TASK, { limit = 1 }) end, "unknown option 'limit' to 'read_multiple_choice'")
check_error(function() return qf.read_multiple_choice("tests/data") end, "tests/data")

H.summary()

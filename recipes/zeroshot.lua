-- zeroshot.lua — zero-shot multiple-choice accuracy (lm-eval's acc and acc_norm, the second metric
-- of the QuantEase paper) of a model on JSONL tasks; docs/zeroshot.md says how to convert
-- HellaSwag, PIQA, ARC and Winogrande to the format.
--   qforge run recipes/zeroshot.lua [model=DIR_OR_FILE] [tasks=a.jsonl,b.jsonl] [max_items=N] [delimiter=" "]
local opt = qf.options({
  model = "../shared/models/stories260K",
  tasks = "tests/data/stories_mc.jsonl",
  max_items = 0,
  delimiter = " ",
  lazy = false,
}, {
  model = "model directory or checkpoint file",
  tasks = "comma-separated JSONL task files (one item per line: context, choices, label)",
  max_items = { "score at most this many items of each task (0 = all)", min = 0 },
  delimiter = "put before every choice (lm-eval's target_delimiter)",
  lazy = "convert each block from the file when it is used",
})

-- Task names: the file names without their extension, each once.
local tasks, seen = {}, {}
for entry in (opt.tasks .. ","):gmatch("([^,]*),") do
  local path = entry:match("^%s*(.-)%s*$")
  if path == "" then qf.option_error("tasks", string.format("an empty entry in %q", opt.tasks)) end
  local name = (path:match("([^/]+)$") or path):gsub("%.jsonl$", ""):gsub("%.json$", "")
  if seen[name] then
    qf.option_error("tasks", string.format("two tasks named %q (%s and %s): task names are the file names", name, seen[name], path))
  end
  seen[name] = path
  tasks[#tasks + 1] = { name = name, path = path }
end

-- Every task file is read and checked before the model is loaded.
for _, t in ipairs(tasks) do
  t.items = qf.read_multiple_choice(t.path, { max_items = opt.max_items })
end

local m = qf.load_model(opt.model, { lazy = opt.lazy })
print(tostring(m))

local results, protocol = {}, nil
local sum_acc, sum_norm = 0, 0
for _, t in ipairs(tasks) do
  local r = m:multiple_choice(t.items, { delimiter = opt.delimiter })
  protocol = protocol or r.protocol
  results[t.name] = { path = t.path, n = r.n, acc = r.acc, acc_stderr = r.acc_stderr, acc_norm = r.acc_norm,
                      acc_norm_stderr = r.acc_norm_stderr, requests = r.requests, truncated = r.truncated,
                      seconds = r.seconds }
  sum_acc, sum_norm = sum_acc + r.acc, sum_norm + r.acc_norm
  print(string.format("task %s: n %d  acc %.4f ± %.4f  acc_norm %.4f ± %.4f  (%d requests, %d truncated, %.2f s)", t.name,
                      r.n, r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.requests, r.truncated, r.seconds))
  qf.record("tasks", results)
end
print(protocol)

print("")
print("| task | n | acc | ± | acc_norm | ± |")
print("|---|---:|---:|---:|---:|---:|")
for _, t in ipairs(tasks) do
  local r = results[t.name]
  print(string.format("| %s | %d | %.4f | %.4f | %.4f | %.4f |", t.name, r.n, r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr))
end
local k = #tasks
if k > 1 then print(string.format("| mean of %d tasks | | %.4f | | %.4f | |", k, sum_acc / k, sum_norm / k)) end

qf.record("mean_acc", sum_acc / k)
qf.record("mean_acc_norm", sum_norm / k)
qf.record("protocol", protocol)

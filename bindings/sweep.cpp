// qforge sweep: one recipe over the cartesian product of comma-separated option lists.
//
//   qforge sweep recipes/gptq.lua bits=2,3,4 group=-1,32 nsamples=16 --out runs/gptq-grid
//
// * Order: the product of the lists with the keys in command-line order, the last key varying
//   fastest (nested loops, first key outermost); values in the order listed.
// * Every run is `qforge run RECIPE <fixed> <varying> out=SWEEP/<name>`, a subprocess of this
//   binary, so its run directory is exactly what `qforge run` makes (and reruns itself); its
//   stdout and stderr go to SWEEP/logs/<name>.log. <name> joins `key-value` of the varying
//   options with '_' (`bits-3_group-32`); a value's path is cut to its last component and
//   characters outside [A-Za-z0-9._+-] become '_' (values of one key that would then collide
//   get a fingerprint suffix; a name over 200 characters is cut and gets one too).
// * Before any run, every combination's options are checked in process (RunArgs::check: the
//   recipe runs up to its first qf.load_model, writing nothing), and every existing run
//   directory is examined: a complete one (run.json status "ok", written by the runner as its
//   last act, with a readable results.json) of the same recipe and options is skipped; one with
//   other options or another recipe is refused (exit 2); an incomplete one (killed, failed) is
//   removed and run again.
// * A failed run is reported and the sweep goes on with the others (--fail-fast stops it); the
//   exit code is 1 if any run failed. Ctrl-C (SIGINT/SIGTERM reaching the run) stops the sweep.
// * A recipe that declares a `cache` option (every pipeline recipe) gets cache=SWEEP/cache unless
//   the command line sets one: full-precision results that do not depend on the varying options
//   (reference logits, CVXQ's gradient statistics) are computed by the first run that needs them
//   and read by the others (files named by the fingerprint of what they were computed from).
// * A recipe that declares `checkpoint` (every pipeline recipe) gets checkpoint=SWEEP/checkpoints
//   unless the command line sets it: a run killed mid-way resumes after its last finished block
//   when the sweep is run again (the checkpoint= value is not compared with existing runs').
// * SWEEP/sweep.json (rewritten atomically after every run) lists the runs, their options and
//   states; `qforge table SWEEP` reads it.
// * One sweep at a time per directory: SWEEP/sweep.lock is held (flock) while a sweep works.
#include "sweep.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/io.h"
#include "core/json_util.h"
#include "qforge_version.h"
#include "runner.h"

extern char** environ;

namespace qf::lua {

using json = nlohmann::json;

const char* kSweepUsage =
    "usage: qforge sweep RECIPE.lua key=v1,v2,... [key=value ...] [--out DIR] [--fail-fast] [--dry-run]\n"
    "\n"
    "Runs RECIPE once per combination of the comma-separated lists (the cartesian product;\n"
    "keys in command-line order, the last key varying fastest), each as 'qforge run' with\n"
    "the fixed options and out=DIR/<name>, <name> made of the varying options (bits-3_group-32).\n"
    "A literal comma in a value is written '\\,'. Runner options (seed, threads, device) may vary too.\n"
    "\n"
    "  --out DIR     the sweep directory (default runs/sweep-<recipe>-<YYYYmmdd-HHMMSS>); give\n"
    "                the same DIR again to resume: complete runs are skipped\n"
    "  --fail-fast   stop at the first failed run (default: report it and go on)\n"
    "  --dry-run     check every combination and list the runs; run and write nothing\n"
    "\n"
    "Before any run, every combination's options are checked (the recipe runs up to its\n"
    "first qf.load_model, writing nothing), so bits=2,3,99 fails before the first run.\n"
    "A run directory whose run.json says status \"ok\" (the runner writes it last) and whose\n"
    "options and recipe are those of the sweep is complete and skipped; an incomplete one is\n"
    "removed and run again; one with other options is refused. A recipe with a 'cache'\n"
    "option (every pipeline recipe) gets cache=DIR/cache: full-precision reference logits and\n"
    "CVXQ's gradient statistics are computed once and shared. DIR/sweep.json lists the runs,\n"
    "their options and states; DIR/logs/<name>.log holds each run's output. Progress\n"
    "(run i/N, seconds, ETA) goes to stderr. One sweep at a time per DIR (DIR/sweep.lock).\n"
    "'qforge table DIR' tabulates the results.\n"
    "\n"
    "exit codes: 0 every run complete, 1 a run failed or the sweep was interrupted,\n"
    "2 usage or option error (before any run)\n";

static int sweep_usage_error(const std::string& msg) {
  std::cerr << "qforge sweep: error: " << msg << "\n(see 'qforge sweep --help')\n";
  return 2;
}

static std::string now_str(const char* fmt, bool utc) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  if (utc) gmtime_r(&t, &tm);
  else localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, fmt, &tm);
  return buf;
}

static std::string secs(double s) {
  char buf[32];
  if (s < 100) std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 6000) std::snprintf(buf, sizeof buf, "%d min %02d s", (int)s / 60, (int)s % 60);
  else std::snprintf(buf, sizeof buf, "%d h %02d min", (int)s / 3600, ((int)s % 3600) / 60);
  return buf;
}

static std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return buf;
}

// A value list: "2,3,4" → {2, 3, 4}; "\," is a literal comma.
static std::vector<std::string> split_list(const std::string& v) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size() && v[i + 1] == ',') {
      out.back() += ',';
      ++i;
    } else if (v[i] == ',') {
      out.emplace_back();
    } else {
      out.back() += v[i];
    }
  }
  return out;
}

// The part of a run directory's name one value gives.
static std::string name_part(const std::string& value) {
  std::string v = value;
  while (v.size() > 1 && v.back() == '/') v.pop_back();
  if (v.find('/') != std::string::npos && v != "/") v = v.substr(v.find_last_of('/') + 1);
  std::string r;
  for (char c : v) {
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                      c == '+' || c == '-';
    r += keep ? c : '_';
  }
  if (r.size() > 48) r.resize(48);
  return r.empty() ? "_" : r;
}

struct Spec {
  std::string key;
  std::vector<std::string> values;  // one value: a fixed option
  std::vector<std::string> parts;   // name parts of the values (varying keys)
};

namespace {
// Replaces std::cerr's buffer while an option check runs: its messages are shown only on refusal.
struct CerrCapture {
  std::ostringstream buf;
  std::streambuf* old;
  CerrCapture() : old(std::cerr.rdbuf(buf.rdbuf())) {}
  ~CerrCapture() { std::cerr.rdbuf(old); }
};

struct Run {
  std::string name, dir;
  std::vector<std::string> kv;                       // key=value arguments, out= excepted
  std::vector<std::pair<std::string, std::string>> vary;  // the varying options' values
  std::string state = "pending";                     // pending, ok, failed, interrupted
  bool skipped = false;                              // complete before this sweep started
  bool stale = false;                                // an incomplete run directory to remove first
  int exit_code = -1;
  double seconds = -1;
};
}  // namespace

static std::map<std::string, std::string> kv_map(const json& args) {
  std::map<std::string, std::string> m;
  if (!args.is_array()) return m;
  for (const json& a : args) {
    if (!a.is_string()) continue;
    const std::string s = a.get<std::string>();
    const size_t eq = s.find('=');
    if (eq == std::string::npos || s.compare(0, eq, "out") == 0) continue;
    m[s.substr(0, eq)] = s.substr(eq + 1);
  }
  return m;
}

static json read_json_object(const std::string& path) {
  json j = parse_json_bounded(read_file(path), "'" + path + "'");
  if (!j.is_object()) fail("'", path, "' is not a JSON object");
  return j;
}

// Nothing but what the runner writes into a run directory before its run.json.
static bool only_runner_files(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  bool only = true;
  while (const dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." || n == "recipe.lua" || n == "options.json" || n == "results.json" || n == "log.jsonl" ||
        n == "rerun.sh" || n.find(".tmp.") != std::string::npos)
      continue;
    only = false;
  }
  closedir(d);
  return only;
}

static volatile sig_atomic_t g_interrupted = 0;
static void on_signal(int) {
  if (!g_interrupted) {
    static const char m[] = "qforge sweep: signal received: stopping after the current run\n";
    if (write(2, m, sizeof m - 1) < 0) {
    }
  }
  g_interrupted = 1;
}

// Runs `qforge run ...` with stdout and stderr into log; returns the wait status.
static int spawn_run(const std::string& exe, const std::vector<std::string>& argv, const std::string& log, pid_t* pid_out) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) fail("cannot start '", exe, "': ", std::strerror(rc));
  *pid_out = pid;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid: ", std::strerror(errno));
  return status;
}

static std::string tail_lines(const std::string& path, size_t n) {
  std::string s;
  try {
    s = read_file(path, 1ull << 26);
  } catch (const std::exception&) {
    return "";
  }
  size_t pos = s.size();
  if (pos && s[pos - 1] == '\n') --pos;
  for (size_t k = 0; k < n && pos != std::string::npos && pos > 0; ++k) pos = s.rfind('\n', pos - 1);
  return s.substr(pos == std::string::npos || pos == 0 ? 0 : pos + 1);
}

int sweep_command(const std::vector<std::string>& args) {
  std::string recipe, out;
  bool fail_fast = false, dry_run = false;
  std::vector<Spec> specs;
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::cout << kSweepUsage;
      return 0;
    }
    if (a == "--out" || a.rfind("--out=", 0) == 0) {
      if (a == "--out" && i + 1 >= args.size()) return sweep_usage_error("--out needs a directory");
      out = a == "--out" ? args[++i] : a.substr(6);
      if (out.empty()) return sweep_usage_error("--out needs a directory");
      continue;
    }
    if (a == "--fail-fast") {
      fail_fast = true;
      continue;
    }
    if (a == "--dry-run") {
      dry_run = true;
      continue;
    }
    if (!a.empty() && a[0] == '-')
      return sweep_usage_error("unknown option '" + a + "' (known: --out DIR, --fail-fast, --dry-run, --help)");
    const size_t eq = a.find('=');
    if (recipe.empty() && eq == std::string::npos) {
      recipe = a;
      continue;
    }
    if (eq == std::string::npos || eq == 0)
      return sweep_usage_error("unexpected argument '" + a + "' (expected key=v1,v2,... after the recipe)");
    if (recipe.empty()) return sweep_usage_error("the recipe comes first, before '" + a + "'");
    Spec s;
    s.key = a.substr(0, eq);
    if (s.key == "out") return sweep_usage_error("out= is the sweep's: give --out DIR (each run gets DIR/<name>)");
    for (const Spec& o : specs)
      if (o.key == s.key) return sweep_usage_error("option '" + s.key + "' given twice");
    s.values = split_list(a.substr(eq + 1));
    if (s.values.size() > 1) {
      for (const std::string& v : s.values)
        if (v.empty()) return sweep_usage_error("option '" + s.key + "': empty value in the list '" + a.substr(eq + 1) + "'");
      std::set<std::string> seen;
      for (const std::string& v : s.values)
        if (!seen.insert(v).second) return sweep_usage_error("option '" + s.key + "': value '" + v + "' listed twice");
      std::map<std::string, int> count;
      for (const std::string& v : s.values) ++count[name_part(v)];
      for (const std::string& v : s.values) {
        std::string p = name_part(v);
        if (count[p] > 1) p += "-" + fingerprint(v).substr(fingerprint(v).size() - 8);
        s.parts.push_back(p);
      }
    }
    specs.push_back(std::move(s));
  }
  if (recipe.empty()) return sweep_usage_error("'sweep' needs a recipe file");
  if (!path_exists(recipe) || is_directory(recipe)) return sweep_usage_error("recipe file '" + recipe + "' not found");

  // The runs, in the documented order: an odometer over the varying keys, the last fastest.
  std::vector<const Spec*> vary;
  for (const Spec& s : specs)
    if (s.values.size() > 1) vary.push_back(&s);
  size_t total = 1;
  for (const Spec* s : vary) {
    total *= s->values.size();
    if (total > 100000) return sweep_usage_error("more than 100000 combinations");
  }
  std::string stem = recipe.substr(recipe.find_last_of('/') == std::string::npos ? 0 : recipe.find_last_of('/') + 1);
  if (stem.size() > 4 && stem.substr(stem.size() - 4) == ".lua") stem.resize(stem.size() - 4);
  if (out.empty()) {
    const std::string base = "runs/sweep-" + stem + "-" + now_str("%Y%m%d-%H%M%S", false);
    out = base;
    for (int n = 2; path_exists(out); ++n) out = base + "-" + std::to_string(n);
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();

  std::vector<Run> runs(total);
  for (size_t r = 0; r < total; ++r) {
    std::vector<size_t> idx(specs.size(), 0);
    size_t rest = r;
    for (size_t k = vary.size(); k-- > 0;) {
      const size_t n = vary[k]->values.size();
      idx[vary[k] - specs.data()] = rest % n;
      rest /= n;
    }
    Run& run = runs[r];
    for (size_t k = 0; k < specs.size(); ++k) {
      const Spec& s = specs[k];
      run.kv.push_back(s.key + "=" + s.values[idx[k]]);
      if (s.values.size() > 1) {
        run.vary.emplace_back(s.key, s.values[idx[k]]);
        run.name += (run.name.empty() ? "" : "_") + s.key + "-" + s.parts[idx[k]];
      }
    }
    if (run.name.empty()) run.name = "run";
    if (run.name.size() > 200) run.name = run.name.substr(0, 180) + "-" + fingerprint(run.name).substr(fingerprint(run.name).size() - 8);
    run.dir = out + "/" + run.name;
  }
  auto describe = [](const Run& run) {
    std::string d;
    for (const auto& [k, v] : run.vary) d += (d.empty() ? "" : " ") + k + "=" + v;
    return d.empty() ? std::string("(no varying option)") : d;
  };

  // 1. Every combination's options, before any run.
  std::cerr << "qforge sweep: " << recipe << ", " << total << " run" << (total == 1 ? "" : "s") << "; checking the options of each\n";
  int refused = 0, worst = 0;
  json declared;  // the first combination's resolved options
  for (size_t r = 0; r < total; ++r) {
    RunArgs ra;
    ra.recipe = recipe;
    ra.kv = runs[r].kv;
    ra.argv = {args[0], "run", recipe};
    ra.check = true;
    if (r == 0) ra.check_options = &declared;
    int rc = 0;
    std::string msgs;
    {
      CerrCapture cap;
      try {
        rc = run_recipe(ra);
      } catch (const std::exception& e) {
        std::cerr << "qforge: error: " << e.what() << "\n";
        rc = 1;
      }
      msgs = cap.buf.str();
    }
    if (rc == 0) continue;
    ++refused;
    worst = std::max(worst, rc);
    if (refused <= 10) {
      std::string err;
      std::istringstream is(msgs);
      for (std::string line; std::getline(is, line);)
        if (line.rfind("qforge: error: ", 0) == 0) {
          err = line.substr(15);
          break;
        }
      if (err.empty()) {  // no "qforge: error:" line: its last line
        std::istringstream ls(msgs);
        for (std::string line; std::getline(ls, line);)
          if (!line.empty()) err = line;
        if (err.empty()) err = "refused (exit " + std::to_string(rc) + ")";
      }
      std::cerr << "qforge sweep: run " << r + 1 << "/" << total << " (" << describe(runs[r]) << "): " << err << "\n";
    }
  }
  if (refused) {
    if (refused > 10) std::cerr << "qforge sweep: ... and " << refused - 10 << " more\n";
    std::cerr << "qforge sweep: error: " << refused << " of " << total << " combinations refused; nothing was run\n";
    return worst == 2 ? 2 : 1;
  }

  // Shared full-precision results: a recipe that declares `cache` (the pipeline recipes) gets
  // cache=DIR/cache unless the command line sets it, so the runs compute each FP reference and
  // each set of CVXQ statistics once (files keyed by model, tokens and options: P.cached).
  const bool cache_given = std::any_of(specs.begin(), specs.end(), [](const Spec& s) { return s.key == "cache"; });
  if (declared.is_object() && declared.contains("cache") && !cache_given) {
    for (Run& run : runs) run.kv.push_back("cache=" + out + "/cache");
    std::cerr << "qforge sweep: full-precision results shared under " << out << "/cache\n";
  }

  // Block checkpoints: a recipe that declares `checkpoint` gets checkpoint=DIR/checkpoints unless
  // the command line sets it, so a run killed mid-way (a machine's session ending) resumes after
  // its last finished block when the sweep is run again (P.quantize_model, docs/api/calibration.md#block-checkpoints).
  const bool checkpoint_given = std::any_of(specs.begin(), specs.end(), [](const Spec& s) { return s.key == "checkpoint"; });
  if (declared.is_object() && declared.contains("checkpoint") && !checkpoint_given) {
    for (Run& run : runs) run.kv.push_back("checkpoint=" + out + "/checkpoints");
    std::cerr << "qforge sweep: block checkpoints under " << out << "/checkpoints (a killed run resumes)\n";
  }

  // 2. What the sweep directory already holds.
  const std::string recipe_fp = fingerprint(read_file(recipe));
  if (path_exists(out) && !is_directory(out)) return sweep_usage_error("'" + out + "' exists and is not a directory");
  if (is_directory(out) && !path_exists(out + "/sweep.json")) {
    bool empty = true;
    if (DIR* d = opendir(out.c_str())) {
      while (const dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != ".." && n != "sweep.lock" && n != "logs") empty = false;
      }
      closedir(d);
    }
    if (!empty) return sweep_usage_error("'" + out + "' is not empty and holds no sweep.json: not a sweep directory");
  }
  // One sweep at a time in a directory: DIR/sweep.lock, held (flock) until this process ends.
  bool created = false;
  if (!dry_run) {
    created = !path_exists(out);
    make_dirs(out);
    const std::string lock = out + "/sweep.lock";
    const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot open '", lock, "': ", std::strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      return sweep_usage_error("another qforge sweep is running in '" + out + "' (it holds " + lock + ")");
    }
    // fd stays open (and locked) for the rest of the sweep; the run subprocesses do not inherit it.
  }
  std::vector<std::string> conflicts;
  size_t complete = 0;
  for (Run& run : runs) {
    if (!path_exists(run.dir)) continue;
    if (!is_directory(run.dir)) {
      conflicts.push_back("'" + run.dir + "' exists and is not a directory");
      continue;
    }
    if (!path_exists(run.dir + "/run.json")) {
      // A run killed while the runner made its directory (run.json is its last first file).
      if (only_runner_files(run.dir)) run.stale = true;
      else conflicts.push_back("'" + run.dir + "' exists and is not a run directory (no run.json)");
      continue;
    }
    json rj;
    try {
      rj = read_json_object(run.dir + "/run.json");
    } catch (const std::exception&) {
      run.stale = true;  // run.json is written atomically: unreadable means not a finished run
      continue;
    }
    std::map<std::string, std::string> want;
    for (const std::string& kv : run.kv) want[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
    auto have = kv_map(rj.value("args", json::array()));
    // Where checkpoints go does not change a result (runs made before checkpoints existed match).
    want.erase("checkpoint");
    have.erase("checkpoint");
    if (have != want || rj.value("recipe_fingerprint", "") != recipe_fp) {
      std::string why = have != want ? "other options" : "another recipe (fingerprint " + rj.value("recipe_fingerprint", "?") + ")";
      if (have != want) {
        std::string h;
        for (const auto& [k, v] : have) h += (h.empty() ? "" : " ") + k + "=" + v;
        why += " (" + h + ")";
      }
      conflicts.push_back("'" + run.dir + "' holds a run with " + why);
      continue;
    }
    bool ok = rj.value("status", "") == "ok";
    if (ok) {
      try {
        read_json_object(run.dir + "/results.json");
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (ok) {
      run.skipped = true;
      run.state = "ok";
      ++complete;
    } else {
      run.stale = true;
    }
  }
  if (!conflicts.empty()) {
    for (const std::string& c : conflicts) std::cerr << "qforge sweep: " << c << "\n";
    std::cerr << "qforge sweep: error: the sweep directory '" << out
              << "' holds runs this sweep would not make; give another --out (or remove them)\n";
    if (created) remove_tree(out);
    return 2;
  }
  const size_t to_run = total - complete;
  std::cerr << "qforge sweep: " << out << ": " << total << " run" << (total == 1 ? "" : "s") << ", " << complete << " complete already, " << to_run
            << " to run (order: keys as given, the last varying fastest)\n";
  if (dry_run) {
    for (size_t r = 0; r < total; ++r)
      std::cout << r + 1 << "/" << total << "  " << runs[r].dir << "  " << describe(runs[r])
                << (runs[r].skipped ? "  (complete)" : runs[r].stale ? "  (incomplete: would be rerun)" : "") << "\n";
    return 0;
  }

  // 3. The runs.
  const std::string exe = self_exe();
  if (exe.empty()) fail("cannot find this program's executable (/proc/self/exe)");
  make_dirs(out + "/logs");
  json sj;
  sj["recipe"] = recipe;
  sj["recipe_fingerprint"] = recipe_fp;
  sj["qforge_version"] = QFORGE_VERSION;
  sj["git_commit"] = QFORGE_GIT_COMMIT;
  sj["argv"] = args;
  sj["start_time"] = now_str("%Y-%m-%dT%H:%M:%SZ", true);
  sj["order"] = "cartesian product of the lists, keys in command-line order, the last varying fastest";
  sj["fixed"] = json::object();
  sj["vary"] = json::array();
  for (const Spec& s : specs) {
    if (s.values.size() == 1) sj["fixed"][s.key] = s.values[0];
    else sj["vary"].push_back({{"key", s.key}, {"values", s.values}});
  }
  auto write_sweep_json = [&](const std::string& status) {
    sj["status"] = status;
    sj["updated"] = now_str("%Y-%m-%dT%H:%M:%SZ", true);
    json rs = json::array();
    for (const Run& run : runs) {
      json o = json::object();
      for (const auto& [k, v] : run.vary) o[k] = v;
      json e = {{"name", run.name}, {"dir", run.name}, {"options", o}, {"args", run.kv}, {"state", run.state},
                {"log", "logs/" + run.name + ".log"}};
      if (run.skipped) e["skipped"] = true;
      if (run.exit_code >= 0) e["exit_code"] = run.exit_code;
      if (run.seconds >= 0) e["seconds"] = run.seconds;
      rs.push_back(e);
    }
    sj["runs"] = rs;
    write_file_atomic(out + "/sweep.json", sj.dump(2) + "\n");
  };
  write_sweep_json("running");

  // The runs get Ctrl-C themselves; the sweep notes it and stops after the current run.
  struct sigaction sa{}, old_int{}, old_term{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  const auto t0 = std::chrono::steady_clock::now();
  double ran_seconds = 0;
  size_t ran = 0, ran_ok = 0, failed = 0;
  std::vector<std::string> failed_names;
  bool interrupted = false;
  for (size_t r = 0; r < total; ++r) {
    Run& run = runs[r];
    const std::string head = "qforge sweep: run " + std::to_string(r + 1) + "/" + std::to_string(total) + " " + run.name;
    if (run.skipped) {
      std::cerr << head << ": complete (run.json status ok), skipped\n";
      continue;
    }
    if (g_interrupted || interrupted) break;
    if (run.stale) {
      std::cerr << head << ": removing the incomplete run directory of an earlier attempt\n";
      remove_tree(run.dir);
    }
    std::cerr << head << " (" << describe(run) << ") ...\n";
    std::vector<std::string> argv = {args[0], "run", recipe};
    argv.insert(argv.end(), run.kv.begin(), run.kv.end());
    argv.push_back("out=" + run.dir);
    const std::string log = out + "/logs/" + run.name + ".log";
    const auto t = std::chrono::steady_clock::now();
    pid_t pid = 0;
    const int status = spawn_run(exe, argv, log, &pid);
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    const bool signalled = WIFSIGNALED(status);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (signalled ? WTERMSIG(status) : 0);
    if (signalled && (WTERMSIG(status) == SIGINT || WTERMSIG(status) == SIGTERM)) g_interrupted = 1;
    if (!g_interrupted) {  // the ETA counts the runs that ended on their own
      ++ran;
      ran_seconds += run.seconds;
    }
    if (run.exit_code == 0) {
      run.state = "ok";
      ++ran_ok;
    } else {
      run.state = g_interrupted ? "interrupted" : "failed";
      if (!g_interrupted) {
        ++failed;
        failed_names.push_back(run.name);
      }
    }
    size_t left = 0;
    for (size_t q = r + 1; q < total; ++q) left += !runs[q].skipped;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cerr << head << ": " << run.state << (run.exit_code ? " (exit " + std::to_string(run.exit_code) + ")" : "") << " in "
              << secs(run.seconds) << "; elapsed " << secs(elapsed);
    if (!g_interrupted)
      std::cerr << ", ETA " << (left ? secs(ran_seconds / ran * left) : std::string("0 s")) << " (" << left << " to run)";
    std::cerr << "\n";
    if (run.state == "failed") {
      std::cerr << "qforge sweep: its output (" << log << ") ends:\n";
      std::istringstream is(tail_lines(log, 8));
      for (std::string line; std::getline(is, line);) std::cerr << "  | " << line << "\n";
    }
    write_sweep_json("running");
    if (g_interrupted) {
      interrupted = true;
      break;
    }
    if (failed && fail_fast) break;
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  interrupted = interrupted || g_interrupted;

  size_t ok = 0;
  for (const Run& run : runs) ok += run.state == "ok";
  const std::string status = interrupted ? "interrupted" : ok == total ? "ok" : "failed";
  write_sweep_json(status);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "qforge sweep: " << status << ": " << total << " runs: " << ran_ok << " ran ok, "
            << complete << " skipped (complete), " << failed << " failed";
  if (failed) {
    std::cerr << " (";
    for (size_t k = 0; k < failed_names.size(); ++k) std::cerr << (k ? ", " : "") << failed_names[k];
    std::cerr << ")";
  }
  if (ok < total && !failed) std::cerr << ", " << total - ok << " not run";
  std::cerr << "; " << secs(elapsed) << "\n";
  std::cerr << "qforge sweep: results: qforge table " << out << "\n";
  if (ok < total) std::cerr << "qforge sweep: to resume, run the same command with --out " << out << "\n";
  return ok == total ? 0 : 1;
}

}  // namespace qf::lua

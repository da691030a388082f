// qforge table: run directories → one markdown table (stdout), CSV, a gnuplot PNG.
//
//   qforge table runs/gptq-grid runs/rtn-grid --csv t.csv --plot t.png
//
// A DIR is a run directory (run.json), a sweep directory (sweep.json: its runs, in the sweep's
// order) or a folder of run directories (those directly inside it, by name). Columns: the run
// (its directory's name; parent/name where names repeat), the recipe when the runs' recipes differ, every option whose value
// differs among the runs that have it (options.json, and run.json's args for runner options such
// as threads; the sweep's varying keys first), then the standard
// results when any run has them — bits_per_weight (results' storage.bits_per_weight),
// ppl_heldout, ppl_wikitext2, any other ppl_* key, ppl, every kld / kld_* key (a number, or a table's `mean`), the
// --keys the user names — then seconds (run.json wall_seconds), commit (run.json git_commit)
// and status when a run is not "ok". A missing value is "—" in markdown and empty in CSV.
// Markdown numbers have 6 significant digits (seconds one decimal); CSV numbers are exact
// (the shortest text that reads back to the recorded double).
#include <limits.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/io.h"
#include "core/json_util.h"
#include "sweep.h"

extern char** environ;

namespace qf::lua {

using json = nlohmann::json;

const char* kTableUsage =
    "usage: qforge table DIR... [--csv FILE] [--md FILE] [--plot FILE.png] [--x KEY] [--y KEY]\n"
    "                    [--curve KEY] [--keys KEY1,KEY2,...]\n"
    "\n"
    "Collects run directories into one markdown table on stdout. A DIR is a run directory,\n"
    "a sweep directory (qforge sweep: its runs in the sweep's order) or a folder of run\n"
    "directories. Columns: run, recipe (when it differs), the options that differ across the\n"
    "runs, then the results present: bits_per_weight (storage.bits_per_weight), ppl_heldout,\n"
    "ppl_wikitext2, other ppl_*, ppl, kld / kld_* (a number or a table's mean), the --keys,\n"
    "seconds (wall), commit, and status when a run did not end ok. Missing values: '—'\n"
    "(CSV: empty).\n"
    "\n"
    "  --csv FILE     also write the table as CSV (exact numbers)\n"
    "  --md FILE      also write the markdown table to FILE\n"
    "  --keys K,...   more result columns: results.json keys, dotted for nested tables\n"
    "                 (storage.codes); a table with a 'mean' gives its mean\n"
    "  --plot FILE    a PNG of --y against --x, one curve per value of --curve, drawn by gnuplot\n"
    "                 (pngcairo; Debian package gnuplot-nox)\n"
    "  --x KEY        default bits_per_weight\n"
    "  --y KEY        default the first perplexity column (log-scale y for perplexities)\n"
    "  --curve KEY    default recipe\n"
    "KEY: a column name, an option (options.json) or a result key as for --keys.\n"
    "\n"
    "exit codes: 0 ok, 1 a file could not be written or gnuplot failed / is missing,\n"
    "2 usage error (unknown option, a DIR that is not a run or sweep directory, an unknown KEY)\n";

static int table_usage_error(const std::string& msg) {
  std::cerr << "qforge table: error: " << msg << "\n(see 'qforge table --help')\n";
  return 2;
}

namespace {
struct Row {
  std::string dir;    // the path as found
  std::string label;  // the run directory's name
  json run, options, results;
  std::string recipe;  // basename
};

struct Column {
  std::string key;    // CSV header, --x/--y/--curve name
  std::string title;  // markdown header
  enum Kind { Text, Option, Result, Seconds, Commit } kind;
};

// Removes a temporary directory and what it holds unless keep is set.
struct TempDir {
  std::string path;
  bool keep = false;
  ~TempDir() {
    if (!path.empty() && !keep) remove_tree(path);
  }
};
}  // namespace

static json read_object(const std::string& path) {
  json j = parse_json_bounded(read_file(path, 1ull << 30), "'" + path + "'");
  if (!j.is_object()) fail("'", path, "' is not a JSON object");
  return j;
}

static std::string base_name(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

static bool is_run_dir(const std::string& d) { return is_directory(d) && path_exists(d + "/run.json"); }

// The run directories DIR stands for (see the file comment); throws a usage message.
static std::vector<std::string> expand(std::string dir, std::vector<std::string>* vary_keys) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_directory(dir)) throw std::runtime_error("'" + dir + "' is not a directory");
  if (is_run_dir(dir)) return {dir};
  std::vector<std::string> out;
  if (path_exists(dir + "/sweep.json")) {
    const json sj = read_object(dir + "/sweep.json");
    if (sj.contains("vary") && sj["vary"].is_array())
      for (const json& v : sj["vary"])
        if (v.is_object() && v.contains("key") && v["key"].is_string()) vary_keys->push_back(v["key"].get<std::string>());
    if (sj.contains("runs") && sj["runs"].is_array())
      for (const json& r : sj["runs"]) {
        if (!r.is_object() || !r.contains("dir") || !r["dir"].is_string()) continue;
        const std::string d = dir + "/" + r["dir"].get<std::string>();
        if (is_run_dir(d)) out.push_back(d);
        else std::cerr << "qforge table: " << dir << ": run '" << r["dir"].get<std::string>() << "' has no run directory ("
                       << r.value("state", "?") << "), left out\n";
      }
    return out;
  }
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (const dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != ".." && is_run_dir(dir + "/" + n)) names.push_back(n);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) throw std::runtime_error("'" + dir + "' is not a run directory (no run.json), a sweep directory (no sweep.json) nor a folder of run directories");
  for (const std::string& n : names) out.push_back(dir + "/" + n);
  return out;
}

// A results value: a number, "nan"/"inf"/"-inf" (how records keep them), or a table's mean.
static std::optional<json> result_value(const json& results, const std::string& key) {
  const json* j = &results;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!j->is_object() || !j->contains(part)) return std::nullopt;
    j = &(*j)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (j->is_object() && j->contains("mean")) j = &(*j)["mean"];
  if (j->is_number() || j->is_boolean()) return *j;
  if (j->is_string()) return *j;
  return std::nullopt;
}

static std::optional<json> cell(const Row& r, const Column& c) {
  switch (c.kind) {
    case Column::Text:
      if (c.key == "run") return json(r.label);
      if (c.key == "recipe") return json(r.recipe);
      if (c.key == "status") return r.run.contains("status") ? std::optional<json>(r.run["status"]) : std::nullopt;
      return std::nullopt;
    case Column::Option:
      if (r.options.contains(c.key)) return r.options[c.key];
      return std::nullopt;
    case Column::Result:
      return result_value(r.results, c.key == "bits_per_weight" ? "storage.bits_per_weight" : c.key);
    case Column::Seconds:
      if (r.run.contains("wall_seconds") && r.run["wall_seconds"].is_number()) return r.run["wall_seconds"];
      return std::nullopt;
    case Column::Commit:
      if (r.run.contains("git_commit") && r.run["git_commit"].is_string()) return r.run["git_commit"];
      return std::nullopt;
  }
  return std::nullopt;
}

static std::string exact_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();  // numbers: shortest round-trip text; booleans: true/false
}

static std::string md_text(const Column& c, const std::optional<json>& v) {
  if (!v) return "—";
  std::string s;
  if (c.kind == Column::Commit && v->is_string()) {
    s = v->get<std::string>();
    const bool dirty = s.size() > 6 && s.compare(s.size() - 6, 6, "-dirty") == 0;
    if (s.size() > 12 + (dirty ? 6 : 0)) s = s.substr(0, 12) + (dirty ? "-dirty" : "");
  } else if (v->is_number_float() && c.kind != Column::Option) {
    char buf[64];
    std::snprintf(buf, sizeof buf, c.kind == Column::Seconds ? "%.1f" : "%.6g", v->get<double>());
    s = buf;
  } else {
    s = exact_text(*v);
  }
  std::string e;
  for (char ch : s) e += ch == '|' ? std::string("\\|") : ch == '\n' ? std::string(" ") : std::string(1, ch);
  return e;
}

static std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string r = "\"";
  for (char c : s) r += c == '"' ? std::string("\"\"") : std::string(1, c);
  return r + "\"";
}

static std::string find_in_path(const std::string& prog) {
  const char* p = getenv("PATH");
  std::string path = p ? p : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t colon = path.find(':', start);
    if (colon == std::string::npos) colon = path.size();
    std::string f = colon > start ? path.substr(start, colon - start) : std::string(1, '.');  // empty: the current directory
    f.push_back('/');
    f.append(prog);
    struct stat st{};
    if (stat(f.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(f.c_str(), X_OK) == 0) return f;
    start = colon + 1;
  }
  return "";
}

static std::string gp_quote(const std::string& s) {  // a gnuplot single-quoted string
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("''") : c == '\n' ? std::string(" ") : std::string(1, c);
  return r + "'";
}

static std::optional<double> as_number(const std::optional<json>& v) {
  if (!v) return std::nullopt;
  if (v->is_number()) return v->get<double>();
  if (v->is_string()) {
    const std::string s = v->get<std::string>();
    if (s == "nan") return std::nan("");
    if (s == "inf") return INFINITY;
    if (s == "-inf") return -INFINITY;
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) return d;
  }
  return std::nullopt;
}

int table_command(const std::vector<std::string>& args) {
  std::vector<std::string> dirs, extra_keys;
  std::string csv, md, plot, xkey, ykey, ckey;
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::cout << kTableUsage;
      return 0;
    }
    std::string* dst = nullptr;
    std::string name = a, value;
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) name = a.substr(0, eq), value = a.substr(eq + 1);
    std::string keys;
    if (name == "--csv") dst = &csv;
    else if (name == "--md") dst = &md;
    else if (name == "--plot") dst = &plot;
    else if (name == "--x") dst = &xkey;
    else if (name == "--y") dst = &ykey;
    else if (name == "--curve") dst = &ckey;
    else if (name == "--keys") dst = &keys;
    else if (!a.empty() && a[0] == '-')
      return table_usage_error("unknown option '" + a + "' (known: --csv, --md, --plot, --x, --y, --curve, --keys, --help)");
    if (!dst) {
      dirs.push_back(a);
      continue;
    }
    if (eq == std::string::npos) {
      if (i + 1 >= args.size()) return table_usage_error(name + " needs a value");
      value = args[++i];
    }
    if (value.empty()) return table_usage_error(name + " needs a value");
    *dst = value;
    if (dst == &keys) {
      std::stringstream ss(keys);
      for (std::string k; std::getline(ss, k, ',');)
        if (!k.empty()) extra_keys.push_back(k);
    }
  }
  if (dirs.empty()) return table_usage_error("'table' needs at least one run or sweep directory");
  if (plot.empty() && (!xkey.empty() || !ykey.empty() || !ckey.empty()))
    return table_usage_error("--x, --y and --curve shape the plot: give --plot FILE.png");
  std::string gnuplot;
  if (!plot.empty()) {
    gnuplot = find_in_path("gnuplot");
    if (gnuplot.empty()) {
      std::cerr << "qforge table: error: --plot needs gnuplot, which is not on PATH (Debian: apt-get install gnuplot-nox; "
                   "scripts/setup.sh installs it)\n";
      return 1;
    }
  }

  // The rows.
  std::vector<Row> rows;
  std::vector<std::string> vary_keys;
  std::set<std::string> seen;
  for (const std::string& d : dirs) {
    std::vector<std::string> found;
    try {
      found = expand(d, &vary_keys);
    } catch (const std::exception& e) {
      return table_usage_error(e.what());
    }
    for (const std::string& f : found) {
      char abs[PATH_MAX];
      const std::string id = realpath(f.c_str(), abs) ? std::string(abs) : f;
      if (!seen.insert(id).second) continue;
      Row r;
      r.dir = f;
      r.label = base_name(f);
      try {
        r.run = read_object(f + "/run.json");
        r.options = path_exists(f + "/options.json") ? read_object(f + "/options.json") : json::object();
        // Runner options the recipe does not declare (threads) are in run.json's args only.
        if (r.run.contains("args") && r.run["args"].is_array())
          for (const json& a : r.run["args"]) {
            if (!a.is_string()) continue;
            const std::string kv = a.get<std::string>();
            const size_t eq = kv.find('=');
            if (eq == std::string::npos || eq == 0 || kv.compare(0, eq, "out") == 0) continue;
            if (!r.options.contains(kv.substr(0, eq))) r.options[kv.substr(0, eq)] = kv.substr(eq + 1);
          }
        r.results = path_exists(f + "/results.json") ? read_object(f + "/results.json") : json::object();
      } catch (const std::exception& e) {
        std::cerr << "qforge table: " << f << ": " << e.what() << "; left out\n";
        continue;
      }
      r.recipe = base_name(r.run.value("recipe", std::string()));
      if (r.recipe == "recipe.lua" && r.run.contains("rerun_of")) r.recipe = base_name(r.run.value("rerun_of", std::string())) + "/recipe.lua";
      rows.push_back(std::move(r));
    }
  }
  if (rows.empty()) return table_usage_error("no run directories found");
  {  // labels: the directory's name; where names repeat, with its parent's (sweep/run); else the path
    auto relabel = [&](auto make) {
      std::map<std::string, int> n;
      for (const Row& r : rows) ++n[r.label];
      for (Row& r : rows)
        if (n[r.label] > 1) r.label = make(r);
    };
    relabel([](const Row& r) {
      std::string d = r.dir;
      while (d.size() > 1 && d.back() == '/') d.pop_back();
      const size_t s = d.find_last_of('/');
      return s == std::string::npos || s == 0 ? d : base_name(d.substr(0, s)) + "/" + base_name(d);
    });
    relabel([](const Row& r) { return r.dir; });
  }

  // The columns.
  std::vector<Column> cols = {{"run", "run", Column::Text}};
  std::set<std::string> recipes;
  for (const Row& r : rows) recipes.insert(r.recipe);
  if (recipes.size() > 1) cols.push_back({"recipe", "recipe", Column::Text});
  std::vector<std::string> opt_keys = vary_keys;
  {
    std::set<std::string> all;
    for (const Row& r : rows)
      for (const auto& [k, v] : r.options.items()) all.insert(k);
    for (const std::string& k : all)
      if (std::find(opt_keys.begin(), opt_keys.end(), k) == opt_keys.end()) opt_keys.push_back(k);
  }
  // checkpoint: where block checkpoints went, never a result-affecting difference
  std::set<std::string> taken = {"run", "recipe", "seconds", "commit", "status", "checkpoint"};
  for (const std::string& k : opt_keys) {  // differing among the runs that have it (another recipe's lack is no column)
    std::set<std::string> vals;
    for (const Row& r : rows)
      if (r.options.contains(k)) vals.insert(r.options[k].dump());
    if (vals.size() > 1 && taken.insert(k).second) cols.push_back({k, k, Column::Option});
  }
  auto any_result = [&](const std::string& k) {
    const Column c{k, k, Column::Result};
    for (const Row& r : rows)
      if (cell(r, c)) return true;
    return false;
  };
  std::vector<std::string> result_keys = {"bits_per_weight", "ppl_heldout", "ppl_wikitext2"};
  {  // other ppl_* keys (a recipe's own protocols), ppl, then every kld / kld_* key
    std::set<std::string> ppl, kld;
    for (const Row& r : rows)
      for (const auto& [k, v] : r.results.items()) {
        if (k.rfind("ppl_", 0) == 0 && k != "ppl_heldout" && k != "ppl_wikitext2") ppl.insert(k);
        if (k == "kld" || k.rfind("kld_", 0) == 0) kld.insert(k);
      }
    result_keys.insert(result_keys.end(), ppl.begin(), ppl.end());
    result_keys.push_back("ppl");
    result_keys.insert(result_keys.end(), kld.begin(), kld.end());
  }
  result_keys.insert(result_keys.end(), extra_keys.begin(), extra_keys.end());
  for (const std::string& k : result_keys) {
    const bool asked = std::find(extra_keys.begin(), extra_keys.end(), k) != extra_keys.end();
    if (!any_result(k)) {
      if (asked) std::cerr << "qforge table: --keys: no run records '" << k << "' (its column is empty)\n";
      else continue;
    }
    if (taken.insert(k).second) cols.push_back({k, k, Column::Result});
  }
  cols.push_back({"seconds", "seconds", Column::Seconds});
  cols.push_back({"commit", "commit", Column::Commit});
  bool all_ok = true;
  for (const Row& r : rows) all_ok = all_ok && r.run.value("status", "") == "ok";
  if (!all_ok) cols.push_back({"status", "status", Column::Text});

  // Markdown and CSV.
  std::ostringstream mdo, csvo;
  for (size_t c = 0; c < cols.size(); ++c) {
    mdo << "| " << cols[c].title << " ";
    csvo << (c ? "," : "") << csv_field(cols[c].key);
  }
  mdo << "|\n";
  csvo << "\n";
  for (size_t c = 0; c < cols.size(); ++c) mdo << "|" << (cols[c].kind == Column::Result || cols[c].kind == Column::Seconds ? "---:" : "---");
  mdo << "|\n";
  for (const Row& r : rows) {
    for (size_t c = 0; c < cols.size(); ++c) {
      const auto v = cell(r, cols[c]);
      mdo << "| " << md_text(cols[c], v) << " ";
      csvo << (c ? "," : "") << (v ? csv_field(exact_text(*v)) : std::string());
    }
    mdo << "|\n";
    csvo << "\n";
  }
  // The protocol of every perplexity column, as the runs recorded it.
  std::ostringstream notes;
  for (const Column& c : cols) {
    if (c.kind != Column::Result || c.key.rfind("ppl", 0) != 0) continue;
    const std::string pk = "protocol" + c.key.substr(3);
    std::vector<std::string> ps;
    for (const Row& r : rows)
      if (r.results.contains(pk) && r.results[pk].is_string() &&
          std::find(ps.begin(), ps.end(), r.results[pk].get<std::string>()) == ps.end())
        ps.push_back(r.results[pk].get<std::string>());
    for (const std::string& p : ps) notes << "- " << c.key << ": " << p << (ps.size() > 1 ? " (some runs)" : "") << "\n";
  }
  std::string md_all = mdo.str();
  if (!notes.str().empty()) md_all += "\n" + notes.str();
  std::cout << md_all;
  std::cout.flush();
  try {
    if (!md.empty()) write_file_atomic(md, md_all);
    if (!csv.empty()) write_file_atomic(csv, csvo.str());
  } catch (const std::exception& e) {
    std::cerr << "qforge table: error: " << e.what() << "\n";
    return 1;
  }
  if (plot.empty()) return 0;

  // The plot: KEY resolves to a column, else an option, else a result key.
  auto lookup = [&](const std::string& key) -> std::function<std::optional<json>(const Row&)> {
    std::string k = key == "bits/weight" ? "bits_per_weight" : key;
    for (const Column& c : cols)
      if (c.key == k) return [c](const Row& r) { return cell(r, c); };
    if (k == "recipe") return [](const Row& r) { return std::optional<json>(json(r.recipe)); };
    for (const Row& r : rows)
      if (r.options.contains(k)) return [k](const Row& row) { return cell(row, Column{k, k, Column::Option}); };
    for (const Row& r : rows)
      if (cell(r, Column{k, k, Column::Result})) return [k](const Row& row) { return cell(row, Column{k, k, Column::Result}); };
    return nullptr;
  };
  if (xkey.empty()) xkey = "bits_per_weight";
  if (ykey.empty()) {
    for (const char* k : {"ppl_heldout", "ppl_wikitext2", "ppl"})
      if (lookup(k)) {
        ykey = k;
        break;
      }
    if (ykey.empty()) return table_usage_error("--plot: no run records a perplexity (ppl_heldout, ppl_wikitext2, ppl); give --y KEY");
  }
  if (ckey.empty()) ckey = "recipe";
  const auto fx = lookup(xkey), fy = lookup(ykey), fc = lookup(ckey);
  std::string cols_known;
  for (const Column& c : cols) cols_known += (cols_known.empty() ? "" : ", ") + c.key;
  for (const auto& [flag, key, f] : {std::tuple{"--x", xkey, fx}, std::tuple{"--y", ykey, fy}, std::tuple{"--curve", ckey, fc}})
    if (!f) return table_usage_error(std::string(flag) + " '" + key + "': no run has it as a column, option or result (columns: " + cols_known + ")");

  std::vector<std::string> curve_names;
  std::map<std::string, std::vector<std::pair<double, double>>> curves;
  bool log_y = ykey.find("ppl") != std::string::npos;
  for (const Row& r : rows) {
    const auto x = as_number(fx(r)), y = as_number(fy(r));
    if (!x || !y || !std::isfinite(*x) || !std::isfinite(*y)) {
      std::cerr << "qforge table: --plot: " << r.label << " has no finite " << (!x || !std::isfinite(*x) ? xkey : ykey)
                << ", not plotted\n";
      continue;
    }
    const auto cv = fc(r);
    const std::string name = cv ? exact_text(*cv) : "—";
    if (!curves.count(name)) curve_names.push_back(name);
    curves[name].emplace_back(*x, *y);
    if (*y <= 0) log_y = false;
  }
  if (curve_names.empty()) {
    std::cerr << "qforge table: error: --plot: no run has numbers for both " << xkey << " and " << ykey << "\n";
    return 1;
  }
  TempDir tmp;
  {
    const char* td = getenv("TMPDIR");
    std::string templ = std::string(td && *td ? td : "/tmp") + "/qforge-plot-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back(0);
    if (!mkdtemp(buf.data())) {
      std::cerr << "qforge table: error: cannot make a temporary directory " << templ << ": " << std::strerror(errno) << "\n";
      return 1;
    }
    tmp.path = buf.data();
  }
  std::ostringstream data, gp;
  for (const std::string& n : curve_names) {
    auto& pts = curves[n];
    std::stable_sort(pts.begin(), pts.end());
    data << "# " << n << "\n";
    for (const auto& [x, y] : pts) {
      char line[96];
      std::snprintf(line, sizeof line, "%.17g %.17g\n", x, y);
      data << line;
    }
    data << "\n\n";
  }
  const std::string png_tmp = plot + ".tmp." + std::to_string(getpid());
  gp << "set terminal pngcairo noenhanced size 960,640\n"
     << "set output " << gp_quote(png_tmp) << "\n"
     << "set title " << gp_quote(ykey + " vs " + xkey + " (" + std::to_string(rows.size()) + " runs)") << "\n"
     << "set xlabel " << gp_quote(xkey) << "\n"
     << "set ylabel " << gp_quote(ykey + (log_y ? " (log scale)" : "")) << "\n"
     << "set grid\nset key top right box opaque\nset offsets graph 0.04, graph 0.04, 0, 0\n";
  if (log_y) gp << "set logscale y\n";
  gp << "plot ";
  for (size_t i = 0; i < curve_names.size(); ++i)
    gp << (i ? ", \\\n     " : "") << gp_quote(tmp.path + "/data.txt") << " index " << i << " using 1:2 with linespoints lw 2 pt 7 ps 1.2 title "
       << gp_quote(ckey + " " + curve_names[i]);
  gp << "\n";
  try {
    write_file_atomic(tmp.path + "/data.txt", data.str());
    write_file_atomic(tmp.path + "/plot.gp", gp.str());
  } catch (const std::exception& e) {
    std::cerr << "qforge table: error: " << e.what() << "\n";
    return 1;
  }
  // gnuplot's own output goes to stderr (stdout holds the table).
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, 2, 1);
  const std::string script = tmp.path + "/plot.gp";
  std::vector<char*> argv = {const_cast<char*>("gnuplot"), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  int rc = posix_spawn(&pid, gnuplot.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  if (rc == 0)
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  std::string png;
  const bool ran = rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (ran && path_exists(png_tmp)) png = read_file(png_tmp, 1ull << 28);
  if (!ran || png.size() < 8 || png.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) {
    std::remove(png_tmp.c_str());
    tmp.keep = true;
    std::cerr << "qforge table: error: gnuplot (" << gnuplot << ") did not write a PNG ("
              << (rc ? std::string("could not start: ") + std::strerror(rc)
                     : WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status)) : std::string("killed"))
              << "); it needs the pngcairo terminal (Debian: gnuplot-nox). Script and data kept in " << tmp.path << "\n";
    return 1;
  }
  if (std::rename(png_tmp.c_str(), plot.c_str()) != 0) {
    std::cerr << "qforge table: error: cannot rename " << png_tmp << " to " << plot << ": " << std::strerror(errno) << "\n";
    std::remove(png_tmp.c_str());
    return 1;
  }
  std::cerr << "qforge table: plot " << plot << ": " << ykey << " vs " << xkey << ", " << curve_names.size() << " curve"
            << (curve_names.size() == 1 ? "" : "s") << " by " << ckey << (log_y ? ", log-scale y" : "") << "\n";
  return 0;
}

}  // namespace qf::lua

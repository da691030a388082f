#include "solvers/solver.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "core/error.h"
#include "solvers/decoupleq.h"
#include "solvers/gptq.h"
#include "solvers/ldlq.h"
#include "solvers/magr.h"
#include "solvers/owq.h"
#include "solvers/quantease.h"
#include "solvers/quantease_outliers.h"
#include "solvers/qronos.h"
#include "solvers/rtn.h"

namespace qf {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

const char* option_type_name(OptionType t) {
  switch (t) {
    case OptionType::Int: return "integer";
    case OptionType::Number: return "number";
    case OptionType::Bool: return "boolean";
    case OptionType::String: return "string";
  }
  return "?";
}

static std::string num_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

std::string option_accepted(const OptionField& f, bool typed) {
  if (!f.choices.empty()) {
    std::string s = "one of ";
    for (size_t i = 0; i < f.choices.size(); ++i) s += (i ? ", " : "") + f.choices[i];
    return s;
  }
  const bool lo = std::isfinite(f.min), hi = std::isfinite(f.max);
  const std::string l = (f.min_open ? "> " : ">= ") + num_text(f.min), h = (f.max_open ? "< " : "<= ") + num_text(f.max);
  std::string r;
  if (lo && hi) r = f.min_open || f.max_open ? l + " and " + h : (typed ? "in " : "") + num_text(f.min) + ".." + num_text(f.max);
  else if (lo) r = l;
  else if (hi) r = h;
  if (typed && (f.type == OptionType::Int || f.type == OptionType::Number))
    r = std::string(f.type == OptionType::Int ? "an integer" : "a finite number") + (r.empty() ? "" : " " + r);
  if (r.empty()) return r;
  std::string also;
  for (double x : f.also) also += num_text(x) + " or ";
  return also + r;
}

std::string option_value_error(const OptionField& f, const json& v) {
  const std::string got = ", got " + v.dump();
  switch (f.type) {
    case OptionType::Int:
    case OptionType::Number: {
      if (f.type == OptionType::Int && !v.is_number_integer()) return "must be an integer" + got;
      if (!v.is_number()) return "must be a number" + got;
      const double x = v.get<double>();
      for (double a : f.also)
        if (x == a) return "";
      if (!f.choices.empty()) {
        for (const std::string& c : f.choices)
          if (v.is_number_integer() && c == std::to_string(v.get<int64_t>())) return "";
        return "must be " + option_accepted(f) + ";" + got.substr(1);
      }
      if (!std::isfinite(x) || x < f.min || x > f.max || (f.min_open && x == f.min) || (f.max_open && x == f.max))
        return "must be " + option_accepted(f, true) + got;
      return "";
    }
    case OptionType::Bool: return v.is_boolean() ? "" : "must be true or false" + got;
    case OptionType::String: {
      if (!v.is_string()) return "must be a string" + got;
      if (f.choices.empty()) return "";
      for (const std::string& c : f.choices)
        if (c == v.get<std::string>()) return "";
      return "must be " + option_accepted(f) + ";" + got.substr(1);
    }
  }
  return "";
}

ojson resolve_options(const std::string& who, const std::vector<OptionField>& fields, const json& given) {
  if (!given.is_null() && !given.is_object()) fail(who, ": options must be a table of name = value");
  std::string known;
  for (const OptionField& f : fields) known += (known.empty() ? "" : ", ") + f.name;
  if (given.is_object())
    for (auto it = given.begin(); it != given.end(); ++it) {
      bool found = false;
      for (const OptionField& f : fields) found = found || f.name == it.key();
      if (!found) fail(who, ": unknown option '", it.key(), "' (", known.empty() ? std::string("it takes none") : "known: " + known, ")");
    }
  ojson out = ojson::object();
  for (const OptionField& f : fields) {
    const bool has = given.is_object() && given.contains(f.name);
    const json v = has ? given.at(f.name) : f.default_value;
    const std::string what = who + ": option '" + f.name + "'";
    const std::string why = option_value_error(f, v);
    if (!why.empty()) fail(what, " ", why);
    if (f.type == OptionType::Int && (v.get<int64_t>() > INT32_MAX || v.get<int64_t>() < INT32_MIN))
      fail(what, " must be an integer that fits 32 bits, got ", v.dump());  // the engine's option structs hold int
    out[f.name] = v;
  }
  return out;
}

// ---- the registry: each entry's options mirror its engine Options struct's defaults ----

static OptionField opt_int(const char* n, int64_t d, double lo, const char* help, double hi = INFINITY) {
  return {n, OptionType::Int, d, help, lo, hi, {}, false, false, {}};
}
static OptionField opt_num(const char* n, double d, double lo, const char* help, double hi = INFINITY, bool lo_open = false,
                           bool hi_open = false) {
  return {n, OptionType::Number, d, help, lo, hi, {}, lo_open, hi_open, {}};
}
static OptionField opt_bool(const char* n, bool d, const char* help) { return {n, OptionType::Bool, d, help, -INFINITY, INFINITY, {}, false, false, {}}; }
static OptionField opt_str(const char* n, const char* d, std::vector<std::string> choices, const char* help) {
  return {n, OptionType::String, d, help, -INFINITY, INFINITY, std::move(choices), false, false, {}};
}

// Resolved options (resolve_options on the solver's fields) → the engine's option structs,
// shared by the registry and the Lua primitives (qf.gptq, …).
GptqOptions gptq_options(const ojson& o) {
  GptqOptions go;
  go.blocksize = o.at("blocksize").get<int64_t>();
  go.percdamp = o.at("percdamp").get<double>();
  go.act_order = o.at("act_order").get<bool>();
  go.static_groups = o.at("static_groups").get<bool>();
  go.stochastic = o.at("stochastic").get<bool>();
  go.seed = (uint64_t)o.at("seed").get<int64_t>();
  return go;
}

LdlqOptions ldlq_options(const ojson& o) {
  LdlqOptions lo;
  lo.blocksize = o.at("blocksize").get<int64_t>();
  lo.percdamp = o.at("percdamp").get<double>();
  lo.act_order = o.at("act_order").get<bool>();
  lo.static_groups = o.at("static_groups").get<bool>();
  return lo;
}

QuantEaseOptions quantease_options(const ojson& o) {
  QuantEaseOptions qo;
  qo.iters = (int)o.at("iters").get<int64_t>();
  qo.init = o.at("init").get<std::string>();
  qo.continuous_every = (int)o.at("continuous_every").get<int64_t>();
  qo.percdamp = o.at("percdamp").get<double>();
  qo.act_order = o.at("act_order").get<bool>();
  return qo;
}

OutlierOptions quantease_outliers_options(const ojson& o) {
  OutlierOptions oo;
  oo.ratio = o.at("ratio").get<double>();
  oo.structured = o.at("structured").get<bool>();
  oo.iters = (int)o.at("iters").get<int64_t>();
  oo.alpha = o.at("alpha").get<double>();
  oo.continuous_every = (int)o.at("continuous_every").get<int64_t>();
  return oo;
}

AltMinOptions decoupleq_options(const ojson& o) {
  AltMinOptions ao;
  ao.iters = (int)o.at("iters").get<int64_t>();
  ao.round = o.at("round").get<std::string>() == "pgd" ? AltMinOptions::Round::Pgd : AltMinOptions::Round::Gptq;
  ao.shrink_search = o.at("shrink_search").get<bool>();
  ao.shrink_steps = (int)o.at("shrink_steps").get<int64_t>();
  ao.shrink_grid = (int)o.at("shrink_grid").get<int64_t>();
  ao.percdamp = o.at("percdamp").get<double>();
  ao.act_order = o.at("act_order").get<bool>();
  ao.blocksize = o.at("blocksize").get<int64_t>();
  ao.pgd_steps = (int)o.at("pgd_steps").get<int64_t>();
  ao.pgd_inner_steps = (int)o.at("pgd_inner_steps").get<int64_t>();
  ao.pgd_lr = o.at("pgd_lr").get<double>();
  ao.min_improved = o.at("min_improved").get<double>();
  return ao;
}

QronosOptions qronos_options(const ojson& o) {
  QronosOptions qo;
  qo.act_order = o.at("act_order").get<bool>();
  qo.percdamp = o.at("percdamp").get<double>();
  qo.lambda_damp = o.at("lambda_damp").get<double>();
  qo.blocksize = o.at("blocksize").get<int64_t>();
  qo.stochastic = o.at("stochastic").get<bool>();
  qo.seed = (uint64_t)o.at("seed").get<int64_t>();
  return qo;
}

static std::vector<OptionField> qronos_fields() {
  const QronosOptions d;
  return {opt_bool("act_order", d.act_order, "columns in decreasing diag(H) order (H: the quantized-prefix Gram matrix)"),
          opt_num("percdamp", d.percdamp, 0, "damping: fraction of mean diag H added to H and G (GPTQ's)"),
          opt_num("lambda_damp", d.lambda_damp, 0, "damping: fraction of lambda_max(H) added to H and G (the Qronos reference's, 1e-6)"),
          opt_int("blocksize", d.blocksize, 1, "columns per lazy batch"),
          opt_bool("stochastic", d.stochastic, "unbiased stochastic rounding (docs/methods.md#stochastic-rounding)"),
          opt_int("seed", (int64_t)d.seed, 0, "stochastic: the draws' seed (mixed with the layer's block and name)")};
}

const std::vector<OptionField>& magr_option_fields() {
  static const std::vector<OptionField> f = [] {
    const MagrOptions m;
    return std::vector<OptionField>{
        opt_num("alpha", m.alpha, 0, "l-infinity penalty per row (or group), Sigma normalised by lambda_max: the MagR code's alpha (1e-3 per channel, 1e-4 per group)"),
        opt_int("iters", m.iters, 0, "proximal-gradient iterations"),
        opt_int("group", 0, -1, "inputs per l-infinity group: -1 one per row, 0 the grid's group (per row without one), g >= 1 groups of g")};
  }();
  return f;
}

MagrOptions magr_options(const ojson& o, int64_t grid_group) {
  MagrOptions m;
  m.alpha = o.at("alpha").get<double>();
  m.iters = (int)o.at("iters").get<int64_t>();
  const int64_t g = o.at("group").get<int64_t>();
  m.group = g == 0 ? (grid_group > 0 ? grid_group : -1) : g;
  return m;
}

LayerProblem magr_problem(const LayerProblem& p, const GridSpec& grid, const ojson& resolved, const SolverLog& log, ojson* info) {
  MagrResult r = magr(p, magr_options(resolved, grid.group), log);
  if (info) *info = magr_info(r);
  LayerProblem out = p;  // Σ, μ, tokens, site unchanged
  out.W = std::move(r.W);
  return out;
}

ojson magr_info(const MagrResult& r) {
  return {{"fidelity", r.fidelity}, {"relative", r.relative}, {"linf_ratio", r.linf_ratio}, {"linf_group_ratio", r.linf_group_ratio},
          {"lambda_max", r.lambda_max}, {"iters", r.iters}, {"objective_start", r.objective.front()},
          {"objective_end", r.objective.back()}, {"seconds", r.seconds}};
}

OwqOptions owq_options(const ojson& o) {
  OwqOptions w;
  w.columns = o.at("columns").get<int64_t>();
  w.target_bits = o.at("target_bits").get<double>();
  w.score = o.at("score").get<std::string>() == "sigma_diag" ? OwqScore::SigmaDiag : OwqScore::RtnError;
  const std::string k = o.at("layer_kind").get<std::string>();
  w.layer_kind = k == "attention" ? OwqLayerKind::Attention : k == "mlp" ? OwqLayerKind::Mlp : OwqLayerKind::Auto;
  w.owq_layers = (int)o.at("owq_layers").get<int64_t>();
  w.gptq = gptq_options(o);
  return w;
}

static std::vector<SolverEntry> make_registry() {
  const GptqOptions g;
  const QuantEaseOptions qe;
  const OutlierOptions ol;
  const AltMinOptions am;
  std::vector<SolverEntry> r;
  r.push_back({"rtn", "round to nearest on the grid fitted to W (docs/methods.md#rtn)", {},
               [](const LayerProblem& p, const GridSpec& s, const ojson&, const SolverLog&) {
                 return SolveResult{rtn(p.W, s, sigma_diag(p.sigma).data()), ojson::object()};
               }});
  r.push_back({"gptq", "GPTQ, lazy-batch Cholesky form (docs/methods.md#gptq)",
               {opt_int("blocksize", g.blocksize, 1, "columns per lazy-batch block"),
                opt_num("percdamp", g.percdamp, 0, "damping: fraction of mean diag Sigma added (x10 on Cholesky failure)"),
                opt_bool("act_order", g.act_order, "columns in decreasing diag(Sigma) order"),
                opt_bool("static_groups", g.static_groups, "group parameters from the original W up front (needs group > 0)"),
                opt_bool("stochastic", g.stochastic, "stochastic OPTQ: unbiased rounding to one of the two neighbouring grid values (docs/methods.md#stochastic-rounding)"),
                opt_int("seed", (int64_t)g.seed, 0, "stochastic: the draws' seed (mixed with the layer's block and name)")},
               [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 const GptqOptions go = gptq_options(o);
                 GptqResult gr = gptq(p, s, go, log);
                 ojson info = {{"percdamp", gr.percdamp_used}, {"proxy_loss", gr.proxy_loss}};
                 return SolveResult{std::move(gr.q), std::move(info)};
               }});
  r.push_back({"quantease", "QuantEase cyclic coordinate descent (docs/methods.md#quantease)",
               {opt_int("iters", qe.iters, 1, "coordinate-descent sweeps"),
                opt_str("init", qe.init.c_str(), {"w", "rtn", "gptq"}, "starting point: w (the weight), rtn or gptq"),
                opt_int("continuous_every", qe.continuous_every, 0, "every k-th early sweep is continuous (0: never)"),
                opt_num("percdamp", qe.percdamp, 0, "damping of Sigma before solving (reference QuantEase: none)"),
                opt_bool("act_order", qe.act_order, "sweep columns in decreasing diag(Sigma) order")},
               [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 const QuantEaseOptions qo = quantease_options(o);
                 QuantEaseResult qr = quantease(p, s, qo, log);
                 ojson info = {{"sweeps", qr.objective}, {"init_objective", qr.init_objective}};
                 return SolveResult{std::move(qr.q), std::move(info)};
               }});
  r.push_back({"quantease_outliers", "QuantEase with a sparse full-precision outlier matrix by IHT (docs/methods.md#outliers)",
               {opt_num("ratio", ol.ratio, 0, "fraction of weights (or of columns when structured) kept in full precision", 1, false, true),
                opt_bool("structured", ol.structured, "whole outlier columns instead of single entries"),
                opt_int("iters", ol.iters, 1, "sweep + IHT iterations"),
                opt_num("alpha", ol.alpha, 0, "IHT step size (times 1/(2 lambda_max))", INFINITY, true),
                opt_int("continuous_every", ol.continuous_every, 0, "QuantEase's continuous-sweep schedule (0: never)")},
               [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 const OutlierOptions oo = quantease_outliers_options(o);
                 OutlierResult orr = quantease_outliers(p, s, oo, log);
                 ojson info = {{"sweeps", orr.objective}, {"outliers", orr.q.outliers.nnz()}};
                 return SolveResult{std::move(orr.q), std::move(info)};
               }});
  r.push_back({"decoupleq", "decoupleQ's layer stage: alternating minimization over codes and (scale, zero) (docs/methods.md#decoupleq)",
               {opt_int("iters", am.iters, 1, "iterations (the init is the first)"),
                opt_str("round", "gptq", {"gptq", "pgd"}, "integer step: gptq (error feedback) or pgd (projected gradient)"),
                opt_bool("shrink_search", am.shrink_search, "round 1: (s, z) from a range-shrink search"),
                opt_int("shrink_steps", am.shrink_steps, 1, "shrink factors tried"),
                opt_int("shrink_grid", am.shrink_grid, 1, "shrink factor denominator"),
                opt_num("percdamp", am.percdamp, 0, "GPTQ rounding damping"),
                opt_bool("act_order", am.act_order, "GPTQ rounding in decreasing diag(Sigma) order"),
                opt_int("blocksize", am.blocksize, 1, "GPTQ lazy batch"),
                opt_int("pgd_steps", am.pgd_steps, 0, "projected Adam steps before rounding"),
                opt_int("pgd_inner_steps", am.pgd_inner_steps, 0, "steps after each column is frozen"),
                opt_num("pgd_lr", am.pgd_lr, 0, "round=pgd: Adam step size in code units", INFINITY, true),
                opt_num("min_improved", am.min_improved, 0, "stop when fewer rows than this fraction improved in a round", 1)},
               [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 const AltMinOptions ao = decoupleq_options(o);
                 AltMinResult ar = alt_min(p, s, ao, log);
                 ojson info = {{"history", ar.history}, {"rows_improved", ar.rows_improved}, {"iters", ar.iters},
                               {"damped_rows", ar.damped_rows}};
                 return SolveResult{std::move(ar.q), std::move(info)};
               }});
  r.push_back({"qronos", "Qronos: correct the past, shape the future, then GPTQ diffusion on the mismatched objective ||WX - QX~||^2 (docs/methods.md#qronos)",
               qronos_fields(), [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 QronosResult qr = qronos(p, s, qronos_options(o), log);
                 return SolveResult{std::move(qr.q), ojson{{"lambda", qr.lambda}}};
               }});
  r.push_back({"gpfq", "GPFQ: greedy path following on the mismatched objective, no future update (docs/methods.md#gpfq)",
               qronos_fields(), [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 QronosResult qr = gpfq(p, s, qronos_options(o), log);
                 return SolveResult{std::move(qr.q), ojson{{"lambda", qr.lambda}}};
               }});
  {
    const OwqOptions w;
    OptionField columns = opt_int("columns", w.columns, 0, "weak input columns kept in fp16 (-1: from target_bits)");
    columns.also = {-1};
    OptionField target = opt_num("target_bits", w.target_bits, 1, "average bits per weight for the budget rule, >= the grid's bits (0: use columns)", 16, false, true);
    target.also = {0};
    r.push_back({"owq", "OWQ: weak columns kept in fp16 with GPTQ's error feedback, GPTQ on the rest (docs/methods.md#owq)",
                 {columns, target,
                  opt_str("score", "rtn_error", {"rtn_error", "sigma_diag"}, "weak-column score: Sigma_jj*|W_j - RTN(W)_j|^2 or Sigma_jj"),
                  opt_str("layer_kind", "auto", {"auto", "attention", "mlp"}, "budget rule's kind: attention (ratio 1) or mlp (0.375); auto: from the site"),
                  opt_int("owq_layers", w.owq_layers, 1, "budget rule: linears per block that get weak columns"),
                  opt_int("blocksize", g.blocksize, 1, "columns per lazy-batch block"),
                  opt_num("percdamp", g.percdamp, 0, "damping: fraction of mean diag Sigma added (x10 on Cholesky failure)"),
                  opt_bool("act_order", g.act_order, "the other columns in decreasing diag(Sigma) order (weak columns last)"),
                  opt_bool("static_groups", g.static_groups, "group parameters from the original W up front (needs group > 0)"),
                  opt_bool("stochastic", g.stochastic, "stochastic OPTQ on the other columns (docs/methods.md#stochastic-rounding)"),
                  opt_int("seed", (int64_t)g.seed, 0, "stochastic: the draws' seed (mixed with the layer's block and name)")},
                 [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                   OwqResult wr = owq(p, s, owq_options(o), log);
                   ojson weak = ojson::array();
                   for (int64_t j : wr.weak) weak.push_back(j + 1);
                   ojson info = {{"columns", (int64_t)wr.weak.size()}, {"weak_columns", weak}, {"percdamp", wr.percdamp_used},
                                 {"proxy_loss", wr.proxy_loss}};
                   return SolveResult{std::move(wr.q), std::move(info)};
                 }});
  }
  const LdlqOptions ld;
  r.push_back({"ldlq", "LDLQ, QuIP's rounding from the LDL factor of Sigma; rounds as GPTQ does (docs/methods.md#ldlq)",
               {opt_int("blocksize", ld.blocksize, 1, "dynamic groups: fitted with the feedback of the columns before their GPTQ lazy-batch block (1: all earlier columns)"),
                opt_num("percdamp", ld.percdamp, 0, "damping: fraction of mean diag Sigma added (x10 on factorization failure)"),
                opt_bool("act_order", ld.act_order, "columns in decreasing diag(Sigma) order"),
                opt_bool("static_groups", ld.static_groups, "group parameters from the original W up front (needs group > 0)")},
               [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 LdlqResult lr = ldlq(p, s, ldlq_options(o), log);
                 ojson info = {{"percdamp", lr.percdamp_used}};
                 return SolveResult{std::move(lr.q), std::move(info)};
               }});
  return r;
}

const std::vector<SolverEntry>& solver_registry() {
  static const std::vector<SolverEntry> r = make_registry();
  return r;
}

const SolverEntry& find_solver(const std::string& name) {
  std::string known;
  for (const SolverEntry& e : solver_registry()) {
    if (e.name == name) return e;
    known += (known.empty() ? "" : ", ") + e.name;
  }
  fail("unknown solver '", name, "' (known: ", known, ")");
}

const std::vector<OptionField>& quip_option_fields() {
  static const std::vector<OptionField> f = {
      opt_int("seed", 0, 0, "run seed: each linear's transforms are drawn from it, its block and its name"),
      opt_bool("rescale", true, "QuIP's diagonal rescaling s_j = (Sigma_jj/max diag / |W_:j|^2)^(1/4) before the rotations"),
      opt_str("sides", "both", {"both", "input", "output"}, "rotate the input side (V), the output side (U) or both"),
      opt_str("kind", "hadamard", {"hadamard", "butterfly"}, "random orthogonal transforms: randomized Hadamard or QuIP's Kronecker butterfly"),
      opt_bool("measure_sigma", false, "also record the mu-incoherence of Sigma's eigenvectors before and after (two O(n^3) eigendecompositions)")};
  return f;
}

IncoherenceOptions quip_options(const ojson& o, const LayerProblem& p) {
  IncoherenceOptions io;
  io.seed = quip_layer_seed((uint64_t)o.at("seed").get<int64_t>(), p.block, p.name);
  io.rescale = o.at("rescale").get<bool>();
  incoherence_sides_from_name(o.at("sides").get<std::string>(), &io.sides);
  io.kind = o.at("kind").get<std::string>() == "butterfly" ? TransformKind::Butterfly : TransformKind::Hadamard;
  io.measure_sigma = o.at("measure_sigma").get<bool>();
  return io;
}

ojson incoherence_info(const IncoherenceResult& r, const IncoherenceOptions& o) {
  const IncoherenceStats& s = r.stats;
  ojson info = {{"kind", transform_kind_name(o.kind)},
                {"sides", incoherence_sides_name(o.sides)},
                {"rescale", o.rescale},
                {"input_seed", (int64_t)r.input_seed},
                {"output_seed", (int64_t)r.output_seed},
                {"mu_w_before", s.mu_w_before},
                {"mu_w_after", s.mu_w_after},
                {"sigma_diag_before", s.sigma_diag_before},
                {"sigma_diag_after", s.sigma_diag_after}};
  if (o.measure_sigma) {
    info["mu_sigma_before"] = s.mu_sigma_before;
    info["mu_sigma_after"] = s.mu_sigma_after;
  }
  info["scale_min"] = s.scale_min;
  info["scale_max"] = s.scale_max;
  info["dead_inputs"] = s.dead_inputs;
  info["transform_bits"] = r.input.storage_bits() + r.output.storage_bits();
  return info;
}

// ---- preprocessing: entries are added by each method's file (docs/methods.md#preprocess) ----
static std::vector<PreprocessEntry> make_preprocess_registry() {
  std::vector<PreprocessEntry> r;
  r.push_back({"magr", "MagR: per-row (or per-group) l-infinity magnitude reduction by proximal gradient, W replaced (docs/methods.md#magr)",
               magr_option_fields(), [](const LayerProblem& p, const GridSpec& s, const ojson& o, const SolverLog& log) {
                 PreprocessResult pr;
                 pr.problem = magr_problem(p, s, o, log, &pr.info);
                 return pr;
               }});
  r.push_back({"quip", "QuIP's incoherence processing: diagonal rescaling, then seeded random orthogonal transforms on both sides (docs/methods.md#quip)",
               quip_option_fields(), [](const LayerProblem& p, const GridSpec&, const ojson& o, const SolverLog&) {
                 const IncoherenceOptions io = quip_options(o, p);
                 IncoherenceResult ir = incoherence(p, io);
                 PreprocessResult pr;
                 pr.info = incoherence_info(ir, io);
                 pr.problem = std::move(ir.problem);
                 pr.input = std::move(ir.input);
                 pr.output = std::move(ir.output);
                 return pr;
               },
               /*changes_basis=*/true});
  return r;
}

const std::vector<PreprocessEntry>& preprocess_registry() {
  static const std::vector<PreprocessEntry> r = make_preprocess_registry();
  return r;
}

const PreprocessEntry& find_preprocess(const std::string& name) {
  std::string known;
  for (const PreprocessEntry& e : preprocess_registry()) {
    if (e.name == name) return e;
    known += (known.empty() ? "" : ", ") + e.name;
  }
  fail("unknown preprocessing step '", name, "' (known: ", known.empty() ? "none" : known, ")");
}

PreprocessResult preprocess_layer(const std::string& name, const LayerProblem& p, const GridSpec& grid, const json& options,
                                  const SolverLog& log) {
  const PreprocessEntry& e = find_preprocess(name);
  const ojson o = resolve_options(e.name, e.options, options);
  const auto t0 = std::chrono::steady_clock::now();
  PreprocessResult r = e.run(p, grid, o, log);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The step's problem must still be one linear's problem of the same shape (a solver trusts it).
  if (r.problem.W.shape() != p.W.shape() || r.problem.sigma.shape() != p.sigma.shape())
    fail(e.name, ": preprocessing changed the problem's shape (W ", shape_str(p.W.shape()), " -> ", shape_str(r.problem.W.shape()), ")");
  if (p.cross.defined() && !r.problem.cross.defined()) {
    // methods.md#qronos: both inputs move to the new basis, x → T·x and x̃ → T·x̃, so G′ = T·G·Tᵀ
    // and Σ_fp′ = T·Σ_fp·Tᵀ (T·M·Tᵀ = T·(T·Mᵀ)ᵀ, with transform_apply_output computing T·M).
    auto congruence = [&](const Tensor& M) {
      if (r.input.none()) return M;
      return transform_apply_output(r.input, transform_apply_output(r.input, M).t().contiguous()).t().contiguous();
    };
    r.problem.cross = congruence(p.cross);
    r.problem.sigma_fp = congruence(p.sigma_fp);
  }
  r.problem.block = p.block;
  r.problem.name = p.name;
  r.problem.site = p.site;
  r.problem.tokens = p.tokens;
  const std::string who = e.name + (p.block > 0 ? " (block " + std::to_string(p.block) + " linear " + p.name + ")" : "");
  if (!r.input.none()) {
    if (r.input.n != p.W.size(1)) fail(who, ": input transform of size ", r.input.n, " for ", p.W.size(1), " columns");
    r.input.validate(who + ": input transform");
  }
  if (!r.output.none()) {
    if (r.output.n != p.W.size(0)) fail(who, ": output transform of size ", r.output.n, " for ", p.W.size(0), " rows");
    r.output.validate(who + ": output transform");
  }
  ojson info = {{"preprocess", e.name}, {"seconds", secs}};
  for (auto it = r.info.begin(); it != r.info.end(); ++it) info[it.key()] = it.value();
  info["options"] = o;
  r.info = std::move(info);
  return r;
}

QuantizedLinear attach_transforms(QuantizedLinear q, const LinearTransform& input, const LinearTransform& output,
                                  const std::string& who) {
  const int64_t rows = q.grid.rows, cols = q.grid.cols;
  auto put = [&](LinearTransform& side, const LinearTransform& t, const char* which, int64_t n) {
    if (t.none()) return;
    if (!side.none())
      fail(who, ": the quantized linear already has an ", which, " transform (", transform_kind_name(side.kind),
           "); a second one (", transform_kind_name(t.kind), ") cannot be composed with it");
    if (t.n != n) fail(who, ": ", which, " transform of size ", t.n, " for a linear with ", n, which[0] == 'i' ? " columns" : " rows");
    t.validate(who + ": " + which + " transform");
    side = t;
  };
  put(q.input, input, "input", cols);
  put(q.output, output, "output", rows);
  return q;
}

SolveResult solve_layer(const std::string& solver, const LayerProblem& p, const GridSpec& grid, const json& options,
                        const SolverLog& log) {
  const SolverEntry& e = find_solver(solver);
  const ojson o = resolve_options(e.name, e.options, options);
  const auto t0 = std::chrono::steady_clock::now();
  SolveResult r = e.run(p, grid, o, log);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Objective obj = objective(p, r.q.dequantize());
  ojson info = {{"solver", e.name}, {"objective", obj.value}, {"relative", obj.relative}, {"seconds", secs}};
  if (p.cross.defined() && p.sigma_fp.defined()) {  // methods.md#qronos: ‖WX − ŴX̃‖², for any solver
    const Objective mo = mismatched_objective(p, r.q.dequantize());
    info["mismatched"] = mo.value;
    info["mismatched_relative"] = mo.relative;
  }
  for (auto it = r.info.begin(); it != r.info.end(); ++it) info[it.key()] = it.value();
  info["options"] = o;
  r.info = std::move(info);
  return r;
}

}  // namespace qf

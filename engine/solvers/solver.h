// qforge — one interface over every layer solver: a LayerProblem in (validated once), a quantized
// linear and an info record out, whose common fields — objective, relative objective, seconds —
// are the same for every solver. Each solver's options are declared once, as a table of fields
// (name, type, default, range or choices, help); parsing, validation, documentation (qf.solvers())
// and recording all come from it. The registry (solver_registry) finds a solver by its method's
// name; adding a solver is one engine file, one table entry here, and its tests.
#pragma once
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/grid.h"
#include "quant/incoherence.h"
#include "quant/layer_problem.h"
#include "solvers/decoupleq.h"
#include "solvers/gptq.h"
#include "solvers/ldlq.h"
#include "solvers/magr.h"
#include "solvers/owq.h"
#include "solvers/quantease.h"
#include "solvers/quantease_outliers.h"
#include "solvers/qronos.h"

namespace qf {

enum class OptionType { Int, Number, Bool, String };
const char* option_type_name(OptionType t);  // "integer", "number", "boolean", "string"

// One declared option of a solver.
struct OptionField {
  std::string name;
  OptionType type;
  nlohmann::json default_value;
  std::string help;
  double min = -std::numeric_limits<double>::infinity();  // Int/Number: allowed range, inclusive
  double max = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices;                        // String: the allowed values (empty: any)
  bool min_open = false, max_open = false;                 // exclusive bounds (> min, < max)
  std::vector<double> also;                                // Int/Number: accepted besides the range (group = -1)
};

// What a field accepts: "1..8", "-1 or >= 1", "> 0 and < 1", "one of w, rtn, gptq" ("": any
// value of its type); typed, as a message says it: "an integer in 1..8", "-1 or an integer >= 1",
// "a finite number > 0". Shared by the solvers' options and qf.options (a recipe's options).
std::string option_accepted(const OptionField& f, bool typed = false);
// "" when v is a value the field accepts; otherwise why not: "must be an integer in 1..8, got 9".
std::string option_value_error(const OptionField& f, const nlohmann::json& v);

// Checks `given` (a JSON object of name → value) against the fields: unknown names, wrong types,
// values out of range or not among the choices are errors naming `who`, the option and the
// allowed values. Returns every field's value (given or default), in declaration order.
nlohmann::ordered_json resolve_options(const std::string& who, const std::vector<OptionField>& fields,
                                       const nlohmann::json& given);

struct SolveResult {
  QuantizedLinear q;
  // objective, relative (of q.dequantize() against the problem's W under its Σ, f64), seconds
  // (the solver's wall time), then the method's own fields.
  nlohmann::ordered_json info;
};

struct SolverEntry {
  std::string name;  // the method: "rtn", "gptq", "quantease", "quantease_outliers", "decoupleq", "owq", "ldlq", …
  std::string help;  // one line
  std::vector<OptionField> options;
  // The method itself, on resolved options; returns the quantized linear and its own info fields.
  std::function<SolveResult(const LayerProblem&, const GridSpec&, const nlohmann::ordered_json&, const SolverLog&)> run;
};

const std::vector<SolverEntry>& solver_registry();

// A solver's resolved options (resolve_options on its registry fields) as the engine's option
// struct: one mapping for the registry and for the Lua primitives.
GptqOptions gptq_options(const nlohmann::ordered_json& resolved);
LdlqOptions ldlq_options(const nlohmann::ordered_json& resolved);
QuantEaseOptions quantease_options(const nlohmann::ordered_json& resolved);
OutlierOptions quantease_outliers_options(const nlohmann::ordered_json& resolved);
AltMinOptions decoupleq_options(const nlohmann::ordered_json& resolved);
QronosOptions qronos_options(const nlohmann::ordered_json& resolved);  // qronos and gpfq
OwqOptions owq_options(const nlohmann::ordered_json& resolved);

// MagR (docs/methods.md#magr), a preprocessing step: its declared options (alpha, iters, group),
// the resolved options as MagrOptions (group 0 = grid_group, or one term per row when that is
// <= 0), and its info fields (fidelity, relative, linf_ratio, linf_group_ratio, lambda_max,
// iters, objective_start, objective_end, seconds).
const std::vector<OptionField>& magr_option_fields();
MagrOptions magr_options(const nlohmann::ordered_json& resolved, int64_t grid_group);
nlohmann::ordered_json magr_info(const MagrResult& r);
// MagR as a preprocessing step: the problem with W replaced by W′ (everything else as given),
// resolved = resolve_options on magr_option_fields(); *info (when given) = magr_info.
LayerProblem magr_problem(const LayerProblem& p, const GridSpec& grid, const nlohmann::ordered_json& resolved,
                          const SolverLog& log = nullptr, nlohmann::ordered_json* info = nullptr);
const SolverEntry& find_solver(const std::string& name);  // error lists the known solvers

// Resolves the options, runs the solver, and fills the common info fields.
SolveResult solve_layer(const std::string& solver, const LayerProblem& p, const GridSpec& grid,
                        const nlohmann::json& options = nlohmann::json::object(), const SolverLog& log = nullptr);

// ---- preprocessing (docs/methods.md#preprocess) -------------------------------------------------
// A step before any solver: one linear's problem in, the problem the solver should see out, and
// the transforms that take the solver's answer back to the original basis. With the convention of
// grid.h (W_eff = O·Ŵ′·T, y = O·(Ŵ′·(T·x))) the solver sees W′ = O⁻¹·W·T⁻¹, Σ′ = T·Σ·Tᵀ, μ′ = T·μ,
// and attach_transforms puts T and O on whatever quantized linear it returns. MagR changes W
// alone (no transform); QuIP changes the basis on both sides. Steps compose in order; at most one
// of them may set each side's transform.
struct PreprocessResult {
  LayerProblem problem;           // what the solver sees
  LinearTransform input, output;  // none: no basis change on that side
  nlohmann::ordered_json info;    // the method's own fields
};

struct PreprocessEntry {
  std::string name;  // the method: "magr", "quip"
  std::string help;  // one line
  std::vector<OptionField> options;
  std::function<PreprocessResult(const LayerProblem&, const GridSpec&, const nlohmann::ordered_json&, const SolverLog&)> run;
  // The step leaves input/output transforms on the solve's result (QuIP): exports of plain codes
  // and finetuning scales/zeros cannot follow it (the pipeline refuses them before any work).
  bool changes_basis = false;
};

const std::vector<PreprocessEntry>& preprocess_registry();
const PreprocessEntry& find_preprocess(const std::string& name);  // error lists the known steps

// Resolves the options, runs the step; info gains preprocess (the name), seconds and options.
PreprocessResult preprocess_layer(const std::string& name, const LayerProblem& p, const GridSpec& grid,
                                  const nlohmann::json& options = nlohmann::json::object(), const SolverLog& log = nullptr);

// q with the preprocessing transforms put on (validated against q's shape); a side that q already
// transforms cannot take another one (transforms do not compose here): an error naming `who`.
QuantizedLinear attach_transforms(QuantizedLinear q, const LinearTransform& input, const LinearTransform& output,
                                  const std::string& who);

// QuIP's incoherence processing, the preprocessing step "quip" (docs/methods.md#quip): its declared
// options (seed — the run seed; each linear's transforms come from quip_layer_seed(seed, p.block,
// p.name) —, rescale, sides, kind, measure_sigma), the resolved options as IncoherenceOptions for
// the problem p, and its info fields (kind, sides, rescale, input_seed, output_seed, mu_w_before,
// mu_w_after, sigma_diag_before, sigma_diag_after, [mu_sigma_before, mu_sigma_after], scale_min,
// scale_max, dead_inputs, transform_bits).
const std::vector<OptionField>& quip_option_fields();
IncoherenceOptions quip_options(const nlohmann::ordered_json& resolved, const LayerProblem& p);
nlohmann::ordered_json incoherence_info(const IncoherenceResult& r, const IncoherenceOptions& o);

}  // namespace qf

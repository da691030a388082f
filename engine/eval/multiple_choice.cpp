#include "eval/multiple_choice.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>
#include <string_view>

#include "core/error.h"
#include "core/io.h"
#include "core/json_util.h"
#include "core/parallel.h"
#include "model/forward.h"

namespace qf {

// ---- items ----------------------------------------------------------------------------

static const char* field_of_options(bool contexts_form) { return contexts_form ? "contexts" : "choices"; }

static std::string label_range(size_t n, bool one_based) {
  const int64_t b = one_based ? 1 : 0;
  std::ostringstream os;  // (not string concatenation: GCC 12 warns falsely on it, -Wrestrict)
  os << "(" << b << ".." << (int64_t)n - 1 + b << ")";
  return os.str();
}

void check_mc_item(const McItem& it, const std::string& where, bool one_based) {
  const char* f = field_of_options(it.contexts_form);
  const size_t n = it.choices.size();
  if (n < 2) fail(where, ": field '", f, "' has ", n, n == 1 ? " entry" : " entries", "; an item needs at least 2");
  if (n > (size_t)kMcMaxChoices) fail(where, ": field '", f, "' has ", n, " entries, more than the limit of ", kMcMaxChoices);
  for (size_t i = 0; i < n; ++i)
    if (it.choices[i].empty())
      fail(where, ": field '", f, "[", i + (one_based ? 1 : 0), "]' is empty (acc_norm divides by its length)");
  if (it.label < 0 || (size_t)it.label >= n)
    fail(where, ": field 'label': ", (int64_t)it.label + (one_based ? 1 : 0), " is out of range for ", n, " options ",
         label_range(n, one_based));
}

static bool blank(std::string_view l) {
  for (char c : l)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != '\v' && c != '\f') return false;
  return true;
}

// A string field of a JSON object; "" when absent and !required.
static std::string json_string(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto f = j.find(key);
  if (f == j.end()) fail(where, ": field '", key, "' is missing");
  if (!f->is_string()) fail(where, ": field '", key, "' must be a string, got ", json_brief(*f));
  return f->get<std::string>();
}

static McItem item_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object())
    fail(where, ": expected a JSON object {\"context\": ..., \"choices\": [...], \"label\": N}, got ", json_brief(j));
  for (auto e = j.begin(); e != j.end(); ++e) {
    const std::string& k = e.key();
    if (k != "context" && k != "choices" && k != "label" && k != "contexts" && k != "continuation")
      fail(where, ": unknown field ", json_brief(nlohmann::json(k)),
           " (known: context, choices, label; or contexts, continuation, label)");
  }
  McItem it;
  const bool has_ctx = j.contains("context"), has_ctxs = j.contains("contexts");
  if (has_ctx && has_ctxs) fail(where, ": fields 'context' and 'contexts' together (one item is one form)");
  it.contexts_form = has_ctxs;
  if (it.contexts_form) {
    if (j.contains("choices")) fail(where, ": fields 'contexts' and 'choices' together (one item is one form)");
    it.continuation = json_string(j, "continuation", where);
  } else {
    if (j.contains("continuation")) fail(where, ": field 'continuation' belongs with 'contexts', not 'context'");
    it.context = json_string(j, "context", where);
  }
  const char* f = field_of_options(it.contexts_form);
  const auto c = j.find(f);
  if (c == j.end()) fail(where, ": field '", f, "' is missing");
  if (!c->is_array()) fail(where, ": field '", f, "' must be an array of strings, got ", json_brief(*c));
  if (c->size() > (size_t)kMcMaxChoices)
    fail(where, ": field '", f, "' has ", c->size(), " entries, more than the limit of ", kMcMaxChoices);
  for (size_t i = 0; i < c->size(); ++i) {
    const nlohmann::json& s = (*c)[i];
    if (!s.is_string()) fail(where, ": field '", f, "[", i, "]' must be a string, got ", json_brief(s));
    it.choices.push_back(s.get<std::string>());
  }
  const auto l = j.find("label");
  if (l == j.end()) fail(where, ": field 'label' is missing");
  if (!l->is_number_integer())
    fail(where, ": field 'label' must be an integer (0-based index into '", f, "'), got ", json_brief(*l));
  const size_t n = it.choices.size();
  const bool in_range = l->is_number_unsigned() ? l->get<uint64_t>() < n : (l->get<int64_t>() >= 0 && (uint64_t)l->get<int64_t>() < n);
  if (!in_range && n >= 2)
    fail(where, ": field 'label': ", l->dump(), " is out of range for ", n, " options ", label_range(n, false));
  it.label = in_range ? (int)l->get<int64_t>() : -1;
  check_mc_item(it, where);
  return it;
}

std::vector<McItem> parse_mc_jsonl(const std::string& text, const std::string& source, int64_t max_items) {
  if (max_items < 0) fail(source, ": max_items must be >= 0 (0 = all), got ", max_items);
  std::vector<McItem> items;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size() && (max_items == 0 || (int64_t)items.size() < max_items)) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string_view l(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line;
    if (blank(l)) continue;
    const std::string where = source + ":" + std::to_string(line);
    if ((int64_t)l.size() > kMcMaxLineBytes)
      fail(where, ": line of ", l.size(), " bytes, longer than the limit of ", kMcMaxLineBytes, " bytes");
    items.push_back(item_from_json(parse_json_bounded(std::string(l), where), where));
  }
  if (items.empty()) fail(source, ": no items (expected one JSON object per line)");
  return items;
}

std::vector<McItem> read_mc_jsonl(const std::string& path, int64_t max_items) {
  const int64_t size = file_size(path);  // refuses directories, FIFOs and devices, naming the path
  if (size > kMcMaxFileBytes)
    fail(path, ": ", size, " bytes, over the limit of ", kMcMaxFileBytes, " bytes (64 MiB) for a task file");
  return parse_mc_jsonl(read_file(path, (uint64_t)kMcMaxFileBytes), path, max_items);
}

int64_t utf8_length(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// ---- requests -------------------------------------------------------------------------

static bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

LoglikRequest mc_request(const Tokenizer& tok, const std::string& context, const std::string& continuation) {
  size_t e = context.size();
  while (e > 0 && ascii_space(context[e - 1])) --e;
  const std::string ctx = context.substr(0, e), cont = context.substr(e) + continuation;
  std::vector<int32_t> c = tok.encode(ctx, true, false);
  const std::vector<int32_t> whole = tok.encode(ctx + cont, true, false);
  LoglikRequest r;
  const size_t split = c.size();
  if (c.empty()) {  // nothing to condition on: one prefix token, as lm-eval
    const int32_t p = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    if (p < 0) fail("multiple_choice: an empty context, and the tokenizer has neither BOS nor EOS to start from");
    c.push_back(p);
  }
  r.tokens = std::move(c);
  if (whole.size() > split) r.tokens.insert(r.tokens.end(), whole.begin() + (int64_t)split, whole.end());
  r.n_cont = whole.size() > split ? (int64_t)(whole.size() - split) : 0;
  return r;
}

// ---- scoring --------------------------------------------------------------------------

// Final-norm + classifier rows at a time (a 32k vocabulary never holds many logit rows).
static constexpr int64_t kHeadRows = 256;

std::vector<LoglikResult> loglikelihoods(const Model& m, const std::vector<LoglikRequest>& reqs, const LoglikOptions& opt,
                                         const McProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t L = m.cfg.seq_len, V = m.cfg.vocab_size, D = m.cfg.dim;
  if (opt.max_batch_rows < 0) fail("loglikelihoods: max_batch_rows must be >= 0 (0 = automatic), got ", opt.max_batch_rows);
  if (L < 1) fail("loglikelihoods: the model's context length is ", L);
  const int64_t R = (int64_t)reqs.size();
  // Model input of request r: tokens[start, start + len), predicting tokens[start + 1, start + len].
  std::vector<int64_t> start((size_t)R), len((size_t)R);
  for (int64_t r = 0; r < R; ++r) {
    const LoglikRequest& q = reqs[(size_t)r];
    const int64_t n = (int64_t)q.tokens.size();
    if (q.n_cont < 1) fail("loglikelihoods: request ", r + 1, " scores no token");
    if (q.n_cont >= n) fail("loglikelihoods: request ", r + 1, " scores ", q.n_cont, " of its ", n, " tokens (at least one must precede them)");
    if (q.n_cont > L)
      fail("loglikelihoods: request ", r + 1, ": the continuation has ", q.n_cont, " tokens, more than the model's context length ", L,
           " (seq_len of '", m.source, "')");
    for (int64_t i = 0; i < n; ++i)
      if (q.tokens[(size_t)i] < 0 || q.tokens[(size_t)i] >= V)
        fail("loglikelihoods: request ", r + 1, ": token id ", q.tokens[(size_t)i], " at position ", i + 1, " is outside the vocabulary [0, ", V, ")");
    start[(size_t)r] = std::max<int64_t>(0, n - 1 - L);
    len[(size_t)r] = n - 1 - start[(size_t)r];
  }
  // Longest first, then request order: the batches depend on the requests alone.
  std::vector<int64_t> order((size_t)R);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return len[(size_t)a] > len[(size_t)b]; });
  const int64_t width = std::max<int64_t>(D, m.cfg.hidden_dim);
  const int64_t budget = opt.max_batch_rows > 0 ? opt.max_batch_rows : std::max<int64_t>(1, (int64_t)(4 << 20) / width);

  std::vector<LoglikResult> out((size_t)R);
  int64_t done = 0;
  for (int64_t b0 = 0; b0 < R;) {
    const int64_t T = len[(size_t)order[(size_t)b0]];
    int64_t B = 1;
    while (b0 + B < R && (B + 1) * T <= budget) ++B;
    std::vector<int32_t> ids((size_t)(B * T), 0);  // right padding: causal attention never reads it
    int64_t rows = 0;
    for (int64_t k = 0; k < B; ++k) {
      const int64_t r = order[(size_t)(b0 + k)];
      const int32_t* src = reqs[(size_t)r].tokens.data() + start[(size_t)r];
      std::copy(src, src + len[(size_t)r], ids.begin() + k * T);
      rows += reqs[(size_t)r].n_cont;
    }
    Tensor x = embed(m, ids);
    for (int l = 0; l < m.n_blocks(); ++l) {
      x = block_forward(m, l, x, (int)B, (int)T);
      m.release_block(l);  // lazy models stream: one converted block at a time
    }
    x = x.contiguous();
    // The rows that predict continuation tokens, in (batch slot, position) order, and their targets.
    Tensor g = Tensor::empty({rows, D});
    std::vector<int32_t> target((size_t)rows, 0);
    std::vector<int64_t> seg((size_t)B);  // first row of each request in g
    {
      int64_t gi = 0;
      for (int64_t k = 0; k < B; ++k) {
        const int64_t r = order[(size_t)(b0 + k)];
        const LoglikRequest& q = reqs[(size_t)r];
        seg[(size_t)k] = gi;
        for (int64_t p = len[(size_t)r] - q.n_cont, i = 0; p < len[(size_t)r]; ++p, ++i) {
          std::memcpy(g.f32() + (gi + i) * D, x.f32() + (k * T + p) * D, (size_t)D * sizeof(float));
          target[(size_t)(gi + i)] = q.tokens[(size_t)(start[(size_t)r] + p + 1)];
        }
        gi += q.n_cont;
      }
    }
    std::vector<double> logp((size_t)rows);
    std::vector<char> top((size_t)rows);  // the target is the row's argmax
    for (int64_t r0 = 0; r0 < rows; r0 += kHeadRows) {
      const int64_t nr = std::min(kHeadRows, rows - r0);
      const Tensor logits = head_forward(m, g.rows(r0, nr));
      const float* lp = logits.f32();
      const int64_t VL = logits.size(1);  // the classifier's rows
      // Each row by one thread, into its own slot: the same bits for any thread count.
#pragma omp parallel for schedule(static) if (worth_parallel(nr * VL))
      for (int64_t i = 0; i < nr; ++i) {
        const float* z = lp + i * VL;
        float mx = z[0];
        int64_t am = 0;
        for (int64_t j = 1; j < VL; ++j)
          if (z[j] > mx) mx = z[j], am = j;
        double se = 0;
        for (int64_t j = 0; j < VL; ++j) se += std::exp((double)z[j] - (double)mx);
        const int32_t t = target[(size_t)(r0 + i)];
        logp[(size_t)(r0 + i)] = (double)z[t] - (double)mx - std::log(se);
        top[(size_t)(r0 + i)] = am == t;
      }
    }
    for (int64_t k = 0; k < B; ++k) {
      const int64_t r = order[(size_t)(b0 + k)];
      double s = 0;
      bool greedy = true;
      for (int64_t c = 0, gi = seg[(size_t)k]; c < reqs[(size_t)r].n_cont; ++c, ++gi) {
        s += logp[(size_t)gi];
        greedy = greedy && top[(size_t)gi];
      }
      if (!std::isfinite(s)) fail("loglikelihoods: request ", r + 1, ": the log-likelihood is non-finite (NaN/Inf in the model?)");
      out[(size_t)r].loglik = s;
      out[(size_t)r].greedy = greedy;
      out[(size_t)r].truncated = start[(size_t)r];
    }
    b0 += B;
    done += B;
    if (progress) progress(done, R, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return out;
}

int argmax_first(const std::vector<double>& v) {
  int best = v.empty() ? -1 : 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[(size_t)best]) best = (int)i;  // strictly greater: a tie keeps the first
  return best;
}

double mean_stderr(const std::vector<double>& x) {
  const size_t n = x.size();
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  double mean = 0;
  for (double v : x) mean += v;
  mean /= (double)n;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (double)(n - 1)) / std::sqrt((double)n);
}

McResult multiple_choice(const Model& m, const Tokenizer& tok, const std::vector<McItem>& items_in, const McOptions& opt,
                         const McProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.max_items < 0) fail("multiple_choice: max_items must be >= 0 (0 = all), got ", opt.max_items);
  const size_t n = opt.max_items > 0 ? std::min(items_in.size(), (size_t)opt.max_items) : items_in.size();
  if (n == 0) fail("multiple_choice: no items");
  std::vector<LoglikRequest> reqs;
  std::vector<size_t> first(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    const McItem& it = items_in[i];
    check_mc_item(it, "multiple_choice: item #" + std::to_string(i + 1));
    first[i] = reqs.size();
    for (size_t c = 0; c < it.choices.size(); ++c) {
      LoglikRequest r = it.contexts_form ? mc_request(tok, it.choices[c], opt.delimiter + it.continuation)
                                         : mc_request(tok, it.context, opt.delimiter + it.choices[c]);
      if (r.n_cont == 0)
        fail("multiple_choice: item #", i + 1, ", option #", c + 1,
             ": the continuation adds no token after the context's (empty, or merged into the context's last token)");
      reqs.push_back(std::move(r));
    }
  }
  first[n] = reqs.size();
  const std::vector<LoglikResult> ll = loglikelihoods(m, reqs, LoglikOptions{opt.max_batch_rows}, progress);

  McResult res;
  res.n = (int64_t)n;
  res.requests = (int64_t)reqs.size();
  std::vector<double> acc(n), acc_norm(n);
  for (size_t i = 0; i < n; ++i) {
    const McItem& it = items_in[i];
    McItemResult ir;
    std::vector<double> normed;
    for (size_t c = 0; c < it.choices.size(); ++c) {
      const LoglikResult& r = ll[first[i] + c];
      ir.loglik.push_back(r.loglik);
      ir.tokens.push_back(reqs[first[i] + c].n_cont);
      ir.greedy.push_back(r.greedy);
      ir.truncated = std::max(ir.truncated, r.truncated);
      res.truncated_requests += r.truncated > 0;
      normed.push_back(r.loglik / (double)utf8_length(it.choices[c]));
    }
    ir.pred = argmax_first(ir.loglik);
    ir.pred_norm = argmax_first(normed);
    acc[i] = ir.pred == it.label ? 1.0 : 0.0;
    acc_norm[i] = ir.pred_norm == it.label ? 1.0 : 0.0;
    res.items.push_back(std::move(ir));
  }
  for (size_t i = 0; i < n; ++i) {
    res.acc += acc[i];
    res.acc_norm += acc_norm[i];
  }
  res.acc /= (double)n;
  res.acc_norm /= (double)n;
  res.acc_stderr = mean_stderr(acc);
  res.acc_norm_stderr = mean_stderr(acc_norm);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ostringstream p;  // the same line for every task of one model and delimiter (counts are fields)
  p << "protocol lm-eval multiple_choice (zero-shot loglikelihood): context tokenized "
    << (tok.add_bos() && tok.bos_id() >= 0 ? "with BOS" : "without BOS") << ", continuation = delimiter "
    << nlohmann::json(opt.delimiter).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
    << " + choice (contexts form: each option a context, delimiter + the shared continuation), split from "
    << "encode(context + continuation); Σ log p(continuation | context) in f64; left-truncated to " << m.cfg.seq_len
    << " tokens; acc = argmax loglik, acc_norm = argmax loglik / characters of the option; ties to the first option";
  res.protocol = p.str();
  return res;
}

}  // namespace qf

#include "core/tensor_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "core/parallel.h"

namespace qf {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();

void need_defined(const Tensor& t, const char* fn) {
  if (!t.defined()) fail(fn, ": tensor is undefined");
}

// Dimensions are 0-based here and printed 1-based, as tensor_ops does (messages reach Lua as-is).
void check_dim(const Tensor& t, int d, const char* fn) {
  need_defined(t, fn);
  if (d < 0 || d >= t.dim())
    fail(fn, ": dimension ", d + 1, " out of range for a ", t.dim(), "-d tensor of shape ", shape_str(t.shape()),
         t.dim() ? " (valid: 1.." + std::to_string(t.dim()) + ")" : std::string());
}

void need_f32(const Tensor& t, const char* fn) {  // the in-place writers' check
  need_defined(t, fn);
  if (t.dtype() != DType::F32)
    fail(fn, ": tensor has dtype ", dtype_name(t.dtype()), ": convert with :to('f32') first");
  t.check_writable(fn);
}

Tensor as_f32(const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to(DType::F32); }

Shape reduced_shape(const Shape& s, int d, bool keepdim) {
  Shape r = s;
  if (keepdim) r[d] = 1;
  else r.erase(r.begin() + d);
  return r;
}

// Calls fn(k, off) over `shape` in row-major order (k = 0..numel-1), off = off0 + Σ i_e·strides[e].
template <class Fn>
void for_each_strided(const Shape& shape, int64_t off0, const Shape& strides, Fn&& fn) {
  const int nd = (int)shape.size();
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  int64_t off = off0;
  for (int64_t k = 0; k < n; ++k) {
    fn(k, off);
    for (int e = nd - 1; e >= 0; --e) {
      if (++idx[e] < shape[e]) { off += strides[e]; break; }
      off -= (shape[e] - 1) * strides[e];
      idx[e] = 0;
    }
  }
}

// The lines of an f32 tensor along d: the storage offset of element 0 of each line (row-major over
// the other dimensions), their length and stride.
struct Lines {
  const float* data = nullptr;
  std::vector<int64_t> base;
  int64_t count = 0, len = 0, stride = 0;
};

Lines lines_of(const Tensor& f, int d) {
  Lines l;
  l.len = f.size(d);
  l.stride = f.stride(d);
  l.count = 1;
  for (int e = 0; e < f.dim(); ++e)
    if (e != d) l.count *= f.size(e);
  if (l.len == 0 || l.count == 0) return l;
  l.data = static_cast<const float*>(f.storage()->data);
  const Tensor first = f.select(d, 0);
  l.base.resize((size_t)l.count);
  for_each_offset(first, [&](int64_t k, int64_t o) { l.base[(size_t)k] = o; });
  return l;
}

// Line k of a contiguous tensor of shape s along d: offset of its element 0 and its stride.
struct OutLine {
  int64_t inner = 1, len = 0;
  int64_t base(int64_t k) const { return (k / inner) * len * inner + k % inner; }
};
OutLine out_line(const Shape& s, int d) {
  OutLine o;
  o.len = s[d];
  for (size_t e = (size_t)d + 1; e < s.size(); ++e) o.inner *= s[e];
  return o;
}

void check_len_i32(const Tensor& t, int d, const char* fn) {
  if (t.size(d) > kMaxI32)
    fail(fn, ": dimension ", d + 1, " of shape ", shape_str(t.shape()), " is too long for i32 indices");
}

// One line: a contiguous copy of its values, a sort key per number and the indices of its NaNs
// (in index order). A key packs an order-preserving transform of the value above the index, so
// sorting keys as integers orders by value, ties by index (a stable order) with one compare;
// -0 is keyed as +0 (they are equal). Descending keys invert the value part, not the index.
struct LineBuf {
  std::vector<float> val;
  std::vector<uint64_t> key;
  std::vector<int32_t> nan, sel;
  void load(const float* x, int64_t len, int64_t stride, bool descending) {
    val.resize((size_t)len);
    key.clear();
    nan.clear();
    for (int64_t i = 0; i < len; ++i) {
      const float v = x[i * stride];
      val[(size_t)i] = v;
      if (std::isnan(v)) {
        nan.push_back((int32_t)i);
        continue;
      }
      uint32_t u;
      const float c = v == 0.f ? 0.f : v;
      std::memcpy(&u, &c, 4);
      u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // IEEE order as unsigned order
      if (descending) u = ~u;
      key.push_back((uint64_t)u << 32 | (uint32_t)i);
    }
  }
  static int32_t index(uint64_t k) { return (int32_t)(uint32_t)k; }
  float value(uint64_t k) const { return val[(size_t)index(k)]; }
};

// Runs body(buf, k) for every line k, one thread per line, each thread with its own LineBuf.
template <class Body>
void per_line(int64_t count, int64_t work, Body&& body) {
#pragma omp parallel if (worth_parallel(work))
  {
    LineBuf buf;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < count; ++k) body(buf, k);
  }
}

// Element copies of any dtype by its size.
template <class Fn>
void with_elem(DType dt, Fn&& fn) {
  switch (dtype_size(dt)) {
    case 1: fn(uint8_t{}); break;
    case 2: fn(uint16_t{}); break;
    default: fn(uint32_t{}); break;
  }
}

[[noreturn]] void index_range_error(const char* fn, int64_t v, int d, int64_t size, int64_t base) {
  if (size == 0) fail(fn, ": index ", v, " out of range for dimension ", d + 1, " of size 0 (the dimension is empty)");
  fail(fn, ": index ", v, " out of range for dimension ", d + 1, " of size ", size, " (valid: ", base, "..",
       size - 1 + base, ")");
}

// Index values made 0-based and checked against [0, size).
std::vector<int64_t> checked_indices(const Tensor& idx, const char* fn, int d, int64_t size, int64_t base) {
  std::vector<int64_t> v = index_values(idx, fn);
  for (int64_t& x : v) {
    if (x < base || x - base >= size) index_range_error(fn, x, d, size, base);
    x -= base;
  }
  return v;
}

void need_1d_index(const Tensor& idx, const char* fn) {
  need_defined(idx, fn);
  if (idx.dim() != 1) fail(fn, ": the index tensor must be 1-d, got shape ", shape_str(idx.shape()));
}

Tensor var_impl(const Tensor& t, int d, bool keepdim, bool unbiased, bool sq, const char* fn) {
  check_dim(t, d, fn);
  if (t.size(d) == 0) fail(fn, ": dimension ", d + 1, " of shape ", shape_str(t.shape()), " is empty");
  const Tensor f = as_f32(t);
  const Lines l = lines_of(f, d);
  Tensor r = Tensor::empty(reduced_shape(t.shape(), d, keepdim));
  float* out = r.f32();
  const double denom = (double)l.len - (unbiased ? 1.0 : 0.0);
#pragma omp parallel for schedule(static) if (worth_parallel(l.count * l.len * 2))
  for (int64_t k = 0; k < l.count; ++k) {
    const float* x = l.data + l.base[(size_t)k];
    double s = 0;
    for (int64_t i = 0; i < l.len; ++i) s += x[i * l.stride];
    const double mean = s / (double)l.len;
    double ss = 0;
    for (int64_t i = 0; i < l.len; ++i) {
      const double dv = x[i * l.stride] - mean;
      ss += dv * dv;
    }
    const double v = denom > 0 ? ss / denom : kNaN;
    out[k] = (float)(sq ? std::sqrt(v) : v);
  }
  return r;
}

template <bool prod>
Tensor cumulative(const Tensor& t, int d, const char* fn) {
  check_dim(t, d, fn);
  const Tensor f = as_f32(t);
  Tensor r = Tensor::empty(t.shape());
  const Lines l = lines_of(f, d);
  if (l.len == 0 || l.count == 0) return r;
  const OutLine ol = out_line(t.shape(), d);
  float* out = r.f32();
#pragma omp parallel for schedule(static) if (worth_parallel(l.count * l.len))
  for (int64_t k = 0; k < l.count; ++k) {
    const float* x = l.data + l.base[(size_t)k];
    float* y = out + ol.base(k);
    double acc = prod ? 1.0 : 0.0;
    for (int64_t i = 0; i < l.len; ++i) {
      if constexpr (prod) acc *= x[i * l.stride];
      else acc += x[i * l.stride];
      y[i * ol.inner] = (float)acc;
    }
  }
  return r;
}

// numpy's "linear" interpolation between sorted values a (index floor(p)) and b (the next), in
// numpy's two-sided form (exact at both ends).
inline double lerp(double a, double b, double frac) {
  const double diff = b - a;
  return frac >= 0.5 ? b - diff * (1.0 - frac) : a + diff * frac;
}
// The order statistics quantiles need: per probability the ranks lo, hi = min(lo + 1, n - 1) of its
// two neighbours and its fraction; `ranks` holds every needed rank once, ascending, and at[j] the
// positions of q[j]'s lo and hi in it.
struct QuantilePlan {
  std::vector<int64_t> ranks;
  std::vector<std::pair<size_t, size_t>> at;
  std::vector<double> frac;
  QuantilePlan(const std::vector<double>& q, int64_t n) {
    std::vector<std::pair<int64_t, int64_t>> lohi;
    for (double p : q) {
      const double pos = p * (double)(n - 1);
      const int64_t lo = std::clamp<int64_t>((int64_t)std::floor(pos), 0, n - 1);
      lohi.emplace_back(lo, std::min<int64_t>(lo + 1, n - 1));
      frac.push_back(pos - (double)lo);
      ranks.push_back(lo);
      ranks.push_back(lohi.back().second);
    }
    std::sort(ranks.begin(), ranks.end());
    ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
    auto find = [&](int64_t r) { return (size_t)(std::lower_bound(ranks.begin(), ranks.end(), r) - ranks.begin()); };
    for (const auto& [lo, hi] : lohi) at.emplace_back(find(lo), find(hi));
  }
  // The quantiles of x (no NaN; reordered in place): the needed order statistics by successive
  // selections (each rank's value is unique whatever the algorithm), then numpy's interpolation.
  void eval(std::vector<double>& x, std::vector<double>& stat, double* out, int64_t out_stride) const {
    stat.resize(ranks.size());
    int64_t from = 0;
    for (size_t r = 0; r < ranks.size(); ++r) {
      std::nth_element(x.begin() + from, x.begin() + ranks[r], x.end());
      stat[r] = x[(size_t)ranks[r]];
      from = ranks[r] + 1;
    }
    for (size_t j = 0; j < at.size(); ++j) out[(int64_t)j * out_stride] = lerp(stat[at[j].first], stat[at[j].second], frac[j]);
  }
};

void check_probs(const std::vector<double>& q, const char* fn) {
  for (double p : q)
    if (!(p >= 0.0 && p <= 1.0)) fail(fn, ": probability ", p, " out of range (valid: 0..1)");
}

}  // namespace

// ---- index values ---------------------------------------------------------------------------
std::vector<int64_t> index_values(const Tensor& idx, const char* fn) {
  need_defined(idx, fn);
  std::vector<int64_t> v((size_t)idx.numel());
  if (idx.dtype() == DType::I32) {
    const int32_t* b = static_cast<const int32_t*>(idx.storage()->data);
    for_each_offset(idx, [&](int64_t k, int64_t o) { v[(size_t)k] = b[o]; });
    return v;
  }
  const std::vector<float> f = idx.to_vector();
  for (size_t k = 0; k < f.size(); ++k) {
    if (!(std::floor(f[k]) == f[k]))
      fail(fn, ": the index tensor holds a non-integer value ", f[k], " (at element ", k + 1, ")");
    if (std::fabs(f[k]) > 9.0e15) fail(fn, ": index ", f[k], " out of range (at element ", k + 1, ")");
    v[k] = (int64_t)f[k];
  }
  return v;
}

// ---- reductions -----------------------------------------------------------------------------
Tensor var_dim(const Tensor& t, int d, bool keepdim, bool unbiased) { return var_impl(t, d, keepdim, unbiased, false, "var"); }
Tensor std_dim(const Tensor& t, int d, bool keepdim, bool unbiased) { return var_impl(t, d, keepdim, unbiased, true, "std"); }

double var_all(const Tensor& t, bool unbiased) {
  need_defined(t, "var");
  if (t.numel() == 0) fail("var: empty tensor");
  const std::vector<float> v = t.to_vector();
  double s = 0;
  for (float x : v) s += x;
  const double mean = s / (double)v.size();
  double ss = 0;
  for (float x : v) ss += ((double)x - mean) * ((double)x - mean);
  const double denom = (double)v.size() - (unbiased ? 1.0 : 0.0);
  return denom > 0 ? ss / denom : kNaN;
}

Tensor cumsum(const Tensor& t, int d) { return cumulative<false>(t, d, "cumsum"); }
Tensor cumprod(const Tensor& t, int d) { return cumulative<true>(t, d, "cumprod"); }

// ---- sorting and selection ------------------------------------------------------------------
ValuesIndices sort(const Tensor& t, int d, bool descending) {
  check_dim(t, d, "sort");
  check_len_i32(t, d, "sort");
  const Tensor f = as_f32(t);
  ValuesIndices r{Tensor::empty(t.shape()), Tensor::empty(t.shape(), DType::I32)};
  const Lines l = lines_of(f, d);
  if (l.len == 0 || l.count == 0) return r;
  const OutLine ol = out_line(t.shape(), d);
  float* vals = r.values.f32();
  int32_t* idx = r.indices.data<int32_t>();
  per_line(l.count, l.count * l.len * 8, [&](LineBuf& buf, int64_t k) {
    buf.load(l.data + l.base[(size_t)k], l.len, l.stride, descending);
    std::sort(buf.key.begin(), buf.key.end());
    const int64_t o = ol.base(k);
    int64_t j = 0;
    auto put = [&](float v, int32_t i) {
      vals[o + j * ol.inner] = v;
      idx[o + j * ol.inner] = i;
      ++j;
    };
    if (descending)
      for (int32_t i : buf.nan) put(buf.val[(size_t)i], i);
    for (uint64_t key : buf.key) put(buf.value(key), LineBuf::index(key));
    if (!descending)
      for (int32_t i : buf.nan) put(buf.val[(size_t)i], i);
  });
  return r;
}

ValuesIndices topk(const Tensor& t, int64_t k, int d, bool largest, bool sorted) {
  check_dim(t, d, "topk");
  check_len_i32(t, d, "topk");
  const int64_t n = t.size(d);
  if (k < 0 || k > n)
    fail("topk: k = ", k, " out of range for dimension ", d + 1, " of size ", n, " (valid: 0..", n, ")");
  Shape os = t.shape();
  os[d] = k;
  ValuesIndices r{Tensor::empty(os), Tensor::empty(os, DType::I32)};
  const Tensor f = as_f32(t);
  const Lines l = lines_of(f, d);
  if (k == 0 || l.count == 0) return r;
  const OutLine ol = out_line(os, d);
  float* vals = r.values.f32();
  int32_t* idx = r.indices.data<int32_t>();
  per_line(l.count, l.count * l.len * 4, [&](LineBuf& buf, int64_t line) {
    buf.load(l.data + l.base[(size_t)line], l.len, l.stride, largest);
    // The order: largest = NaNs (index order) then numbers descending; smallest = numbers
    // ascending then NaNs. The first k of it are taken.
    std::vector<uint64_t>& key = buf.key;
    const int64_t nn = (int64_t)key.size(), nnan = (int64_t)buf.nan.size();
    const int64_t from_nan_first = largest ? std::min(k, nnan) : 0;
    const int64_t from_num = std::min(k - from_nan_first, nn);
    const int64_t from_nan_last = largest ? 0 : k - from_num;
    if (from_num < nn) std::partial_sort(key.begin(), key.begin() + from_num, key.end());
    else std::sort(key.begin(), key.end());
    std::vector<int32_t>& sel = buf.sel;
    sel.clear();
    for (int64_t i = 0; i < from_nan_first; ++i) sel.push_back(buf.nan[(size_t)i]);
    for (int64_t i = 0; i < from_num; ++i) sel.push_back(LineBuf::index(key[(size_t)i]));
    for (int64_t i = 0; i < from_nan_last; ++i) sel.push_back(buf.nan[(size_t)i]);
    if (!sorted) std::sort(sel.begin(), sel.end());
    const int64_t o = ol.base(line);
    for (int64_t j = 0; j < k; ++j) {
      vals[o + j * ol.inner] = buf.val[(size_t)sel[(size_t)j]];
      idx[o + j * ol.inner] = sel[(size_t)j];
    }
  });
  return r;
}

namespace {
// The k-th (0-based) element of the ascending order (numbers, then NaNs) of a loaded line.
std::pair<float, int32_t> kth_of(LineBuf& buf, int64_t k) {
  const int64_t nn = (int64_t)buf.key.size();
  if (k >= nn) {
    const int32_t i = buf.nan[(size_t)(k - nn)];
    return {buf.val[(size_t)i], i};
  }
  std::nth_element(buf.key.begin(), buf.key.begin() + k, buf.key.end());
  const uint64_t key = buf.key[(size_t)k];
  return {buf.value(key), LineBuf::index(key)};
}

ValuesIndices select_kth(const Tensor& t, int d, bool keepdim, const char* fn, int64_t k /* 1-based; 0: median */) {
  check_dim(t, d, fn);
  check_len_i32(t, d, fn);
  const int64_t n = t.size(d);
  if (k == 0) {
    if (n == 0) fail(fn, ": dimension ", d + 1, " of shape ", shape_str(t.shape()), " is empty");
  } else if (k < 1 || k > n) {
    fail(fn, ": k = ", k, " out of range for dimension ", d + 1, " of size ", n,
         n ? " (valid: 1.." + std::to_string(n) + ")" : std::string(" (the dimension is empty)"));
  }
  const Shape os = reduced_shape(t.shape(), d, keepdim);
  ValuesIndices r{Tensor::empty(os), Tensor::empty(os, DType::I32)};
  const Tensor f = as_f32(t);
  const Lines l = lines_of(f, d);
  if (l.count == 0) return r;
  float* vals = r.values.f32();
  int32_t* idx = r.indices.data<int32_t>();
  per_line(l.count, l.count * l.len * 2, [&](LineBuf& buf, int64_t line) {
    buf.load(l.data + l.base[(size_t)line], l.len, l.stride, false);
    std::pair<float, int32_t> p;
    if (k == 0 && !buf.nan.empty()) p = {buf.val[(size_t)buf.nan[0]], buf.nan[0]};
    else p = kth_of(buf, k == 0 ? (n - 1) / 2 : k - 1);
    vals[line] = p.first;
    idx[line] = p.second;
  });
  return r;
}
}  // namespace

ValuesIndices kthvalue(const Tensor& t, int64_t k, int d, bool keepdim) {
  if (k == 0) {  // 0 means the median to select_kth
    check_dim(t, d, "kthvalue");
    fail("kthvalue: k = 0 out of range for dimension ", d + 1, " of size ", t.size(d),
         t.size(d) ? " (valid: 1.." + std::to_string(t.size(d)) + ")" : std::string(" (the dimension is empty)"));
  }
  return select_kth(t, d, keepdim, "kthvalue", k);
}
ValuesIndices median_dim(const Tensor& t, int d, bool keepdim) { return select_kth(t, d, keepdim, "median", 0); }

double median_all(const Tensor& t) {
  need_defined(t, "median");
  if (t.numel() == 0) fail("median: empty tensor");
  std::vector<float> v = t.to_vector();
  for (float x : v)
    if (std::isnan(x)) return kNaN;
  const size_t k = (v.size() - 1) / 2;
  std::nth_element(v.begin(), v.begin() + (std::ptrdiff_t)k, v.end());
  return v[k];
}

Tensor quantile_dim(const Tensor& t, const std::vector<double>& q, int d, bool keepdim, bool scalar_q) {
  check_dim(t, d, "quantile");
  check_probs(q, "quantile");
  if (scalar_q && q.size() != 1) fail("quantile: a scalar q needs exactly one probability");
  if (t.size(d) == 0) fail("quantile: dimension ", d + 1, " of shape ", shape_str(t.shape()), " is empty");
  Shape os = reduced_shape(t.shape(), d, keepdim);
  if (!scalar_q) os.insert(os.begin(), (int64_t)q.size());
  Tensor r = Tensor::empty(os);
  const Tensor f = as_f32(t);
  const Lines l = lines_of(f, d);
  if (l.count == 0 || q.empty()) return r;
  float* out = r.f32();
  const int64_t nq = (int64_t)q.size();
  const QuantilePlan plan(q, l.len);
#pragma omp parallel if (worth_parallel(l.count * l.len * 4))
  {
    std::vector<double> x, stat, res((size_t)nq);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < l.count; ++k) {
      const float* src = l.data + l.base[(size_t)k];
      x.resize((size_t)l.len);
      bool nan = false;
      for (int64_t i = 0; i < l.len; ++i) {
        x[(size_t)i] = src[i * l.stride];
        nan = nan || std::isnan(x[(size_t)i]);
      }
      if (nan) std::fill(res.begin(), res.end(), kNaN);
      else plan.eval(x, stat, res.data(), 1);
      for (int64_t j = 0; j < nq; ++j) out[j * l.count + k] = (float)res[(size_t)j];
    }
  }
  return r;
}

std::vector<double> quantile_all(const Tensor& t, const std::vector<double>& q) {
  need_defined(t, "quantile");
  check_probs(q, "quantile");
  if (t.numel() == 0) fail("quantile: empty tensor");
  const std::vector<float> v = t.to_vector();
  std::vector<double> x(v.begin(), v.end());
  std::vector<double> r(q.size(), kNaN);
  for (double a : x)
    if (std::isnan(a)) return r;
  std::vector<double> stat;
  QuantilePlan(q, (int64_t)x.size()).eval(x, stat, r.data(), 1);
  return r;
}

// ---- constructors ---------------------------------------------------------------------------
Tensor eye(int64_t n, int64_t m) {
  if (n < 0 || m < 0) fail("eye: sizes must be >= 0, got ", n, " x ", m);
  Tensor r = Tensor::zeros({n, m});
  float* p = r.f32();
  for (int64_t i = 0; i < std::min(n, m); ++i) p[i * m + i] = 1.f;
  return r;
}

static constexpr int64_t kMaxArange = int64_t(1) << 31;

Tensor arange(double start, double stop, double step) {
  if (!std::isfinite(start) || !std::isfinite(stop) || !std::isfinite(step))
    fail("arange: arguments must be finite, got start ", start, ", stop ", stop, ", step ", step);
  if (step == 0) fail("arange: step must not be 0");
  const double len = std::ceil((stop - start) / step);
  if (len > (double)kMaxArange)
    fail("arange: ", len, " values from start ", start, " to stop ", stop, " by step ", step, " (at most 2^31)");
  const int64_t n = len > 0 ? (int64_t)len : 0;
  Tensor r = Tensor::empty({n});
  float* p = r.f32();
  for (int64_t i = 0; i < n; ++i) p[i] = (float)(start + (double)i * step);
  return r;
}

Tensor arange_int(int64_t start, int64_t stop, int64_t step) {
  if (step == 0) fail("arange: step must not be 0");
  const __int128 diff = (__int128)stop - start;
  __int128 n = 0;
  if ((diff > 0 && step > 0) || (diff < 0 && step < 0)) n = (diff + step - (step > 0 ? 1 : -1)) / step;
  if (n > kMaxArange)
    fail("arange: ", (double)n, " values from start ", start, " to stop ", stop, " by step ", step, " (at most 2^31)");
  Tensor r = Tensor::empty({(int64_t)n});
  float* p = r.f32();
  for (int64_t i = 0; i < (int64_t)n; ++i) p[i] = (float)((__int128)start + (__int128)i * step);
  return r;
}

Tensor linspace(double a, double b, int64_t n) {
  if (!std::isfinite(a) || !std::isfinite(b)) fail("linspace: endpoints must be finite, got ", a, " and ", b);
  if (n < 0 || n > kMaxArange) fail("linspace: n = ", n, " out of range (valid: 0..2^31)");
  Tensor r = Tensor::empty({n});
  float* p = r.f32();
  if (n == 1) p[0] = (float)a;
  if (n > 1) {
    const double step = (b - a) / (double)(n - 1);
    for (int64_t i = 0; i < n - 1; ++i) p[i] = (float)((double)i * step + a);
    p[n - 1] = (float)b;
  }
  return r;
}

Tensor randint(Rng& rng, int64_t lo, int64_t hi, const Shape& shape) {
  const int64_t imin = std::numeric_limits<int32_t>::min();
  if (lo < imin || hi > kMaxI32) fail("randint: range [", lo, ", ", hi, "] does not fit in i32");
  if (hi < lo) fail("randint: empty range [", lo, ", ", hi, "] (lo and hi are inclusive)");
  for (int64_t s : shape)
    if (s < 0) fail("randint: invalid shape ", shape_str(shape));
  Tensor r = Tensor::empty(shape, DType::I32);
  int32_t* p = r.data<int32_t>();
  for (int64_t i = 0; i < r.numel(); ++i) p[i] = (int32_t)rng.randint(lo, hi);
  return r;
}

Tensor randperm(Rng& rng, int64_t n) {
  if (n < 0 || n > kMaxI32) fail("randperm: n = ", n, " out of range (valid: 0..", kMaxI32, ")");
  Tensor r = Tensor::empty({n}, DType::I32);
  int32_t* p = r.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = (int32_t)i;
  for (int64_t i = n - 1; i >= 1; --i) std::swap(p[i], p[rng.randint(0, i)]);
  return r;
}

Tensor cat(const std::vector<Tensor>& ts, int d) {
  if (ts.empty()) fail("cat: no tensors to concatenate");
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].defined()) fail("cat: tensor ", i + 1, " is undefined");
  const Tensor& a = ts[0];
  check_dim(a, d, "cat");
  Shape s = a.shape();
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    if (t.dtype() != a.dtype())
      fail("cat: tensor ", i + 1, " has dtype ", dtype_name(t.dtype()), ", tensor 1 has ", dtype_name(a.dtype()));
    bool ok = t.dim() == a.dim();
    for (int e = 0; ok && e < a.dim(); ++e) ok = e == d || t.size(e) == a.size(e);
    if (!ok)
      fail("cat: tensor ", i + 1, " has shape ", shape_str(t.shape()), ", tensor 1 has ", shape_str(a.shape()),
           " (sizes must match except in dimension ", d + 1, ")");
    total += t.size(d);
  }
  s[d] = total;
  Tensor r = Tensor::empty(s, a.dtype());
  int64_t at = 0;
  for (const Tensor& t : ts) {
    if (t.size(d) > 0 && t.numel() > 0) r.narrow(d, at, t.size(d)).copy_(t);
    at += t.size(d);
  }
  return r;
}

Tensor stack(const std::vector<Tensor>& ts, int d) {
  if (ts.empty()) fail("stack: no tensors to stack");
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].defined()) fail("stack: tensor ", i + 1, " is undefined");
  const Tensor& a = ts[0];
  if (d < 0 || d > a.dim())
    fail("stack: dimension ", d + 1, " out of range for stacking ", a.dim(), "-d tensors (valid: 1..", a.dim() + 1, ")");
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].dtype() != a.dtype())
      fail("stack: tensor ", i + 1, " has dtype ", dtype_name(ts[i].dtype()), ", tensor 1 has ", dtype_name(a.dtype()));
    if (ts[i].shape() != a.shape())
      fail("stack: tensor ", i + 1, " has shape ", shape_str(ts[i].shape()), ", tensor 1 has ", shape_str(a.shape()),
           " (all shapes must be equal)");
  }
  Shape s = a.shape();
  s.insert(s.begin() + d, (int64_t)ts.size());
  Tensor r = Tensor::empty(s, a.dtype());
  if (r.numel() == 0) return r;
  for (size_t i = 0; i < ts.size(); ++i) r.select(d, (int64_t)i).copy_(ts[i]);
  return r;
}

// ---- indexing -------------------------------------------------------------------------------
namespace {
// out (contiguous, t's dtype, shape t's with size(d) = sel.size()) = t's slices sel[i] along d.
Tensor select_slices(const Tensor& t, int d, const std::vector<int64_t>& sel) {
  Shape os = t.shape();
  os[d] = (int64_t)sel.size();
  Tensor r = Tensor::empty(os, t.dtype());
  if (r.numel() == 0) return r;
  Shape st = t.strides();
  st[d] = 0;
  const OutLine ol = out_line(os, d);
  const int64_t m = (int64_t)sel.size(), sd = t.stride(d);
  with_elem(t.dtype(), [&](auto tag) {
    using E = decltype(tag);
    const E* src = static_cast<const E*>(t.storage()->data);
    E* dst = static_cast<E*>(r.raw());
    for_each_strided(os, t.offset(), st, [&](int64_t k, int64_t off) {
      dst[k] = src[off + sel[(size_t)((k / ol.inner) % m)] * sd];
    });
  });
  return r;
}

// Shapes for gather/scatter: idx has t's number of dimensions, idx.size(e) <= t.size(e) for e != d,
// and idx.size(e) <= src.size(e) for every e (src given).
void check_gather_shapes(const Tensor& t, int d, const Tensor& idx, const Tensor* src, const char* fn) {
  check_dim(t, d, fn);
  need_defined(idx, fn);
  if (idx.dim() != t.dim())
    fail(fn, ": the index tensor has shape ", shape_str(idx.shape()), ", expected ", t.dim(), " dimensions as the tensor ",
         shape_str(t.shape()));
  for (int e = 0; e < t.dim(); ++e)
    if (e != d && idx.size(e) > t.size(e))
      fail(fn, ": the index shape ", shape_str(idx.shape()), " exceeds the tensor's ", shape_str(t.shape()),
           " in dimension ", e + 1, " (only dimension ", d + 1, " may be larger)");
  if (src) {
    need_defined(*src, fn);
    bool ok = src->dim() == idx.dim();
    for (int e = 0; ok && e < idx.dim(); ++e) ok = idx.size(e) <= src->size(e);
    if (!ok)
      fail(fn, ": the source shape ", shape_str(src->shape()), " is smaller than the index shape ", shape_str(idx.shape()));
  }
}

// Calls fn(k, off): k over idx's elements (row-major), off = t's storage offset of the element idx[k] points to.
template <class Fn>
void for_each_target(const Tensor& t, int d, const Tensor& idx, const std::vector<int64_t>& iv, Fn&& fn) {
  Shape st = t.strides();
  st[d] = 0;
  const int64_t sd = t.stride(d);
  for_each_strided(idx.shape(), t.offset(), st, [&](int64_t k, int64_t off) { fn(k, off + iv[(size_t)k] * sd); });
}

// src's values at idx's positions (src narrowed to idx's shape), row-major, as f32: staged before any write.
std::vector<float> source_values(const Tensor& src, const Tensor& idx) {
  Tensor s = src;
  for (int e = 0; e < idx.dim(); ++e) s = s.narrow(e, 0, idx.size(e));
  return s.to_vector();
}
}  // namespace

Tensor index_select(const Tensor& t, int d, const Tensor& idx, int64_t base) {
  check_dim(t, d, "index_select");
  need_1d_index(idx, "index_select");
  return select_slices(t, d, checked_indices(idx, "index_select", d, t.size(d), base));
}

Tensor gather(const Tensor& t, int d, const Tensor& idx, int64_t base) {
  check_gather_shapes(t, d, idx, nullptr, "gather");
  const std::vector<int64_t> iv = checked_indices(idx, "gather", d, t.size(d), base);
  Tensor r = Tensor::empty(idx.shape(), t.dtype());
  if (r.numel() == 0) return r;
  with_elem(t.dtype(), [&](auto tag) {
    using E = decltype(tag);
    const E* src = static_cast<const E*>(t.storage()->data);
    E* dst = static_cast<E*>(r.raw());
    for_each_target(t, d, idx, iv, [&](int64_t k, int64_t off) { dst[k] = src[off]; });
  });
  return r;
}

void scatter_(Tensor& t, int d, const Tensor& idx, const Tensor& src, int64_t base) {
  need_f32(t, "scatter");
  check_gather_shapes(t, d, idx, &src, "scatter");
  const std::vector<int64_t> iv = checked_indices(idx, "scatter", d, t.size(d), base);
  const std::vector<float> sv = source_values(src, idx);
  float* b = static_cast<float*>(t.storage()->data);
  for_each_target(t, d, idx, iv, [&](int64_t k, int64_t off) { b[off] = sv[(size_t)k]; });
}

void scatter_(Tensor& t, int d, const Tensor& idx, float value, int64_t base) {
  need_f32(t, "scatter");
  check_gather_shapes(t, d, idx, nullptr, "scatter");
  const std::vector<int64_t> iv = checked_indices(idx, "scatter", d, t.size(d), base);
  float* b = static_cast<float*>(t.storage()->data);
  for_each_target(t, d, idx, iv, [&](int64_t, int64_t off) { b[off] = value; });
}

void scatter_add_(Tensor& t, int d, const Tensor& idx, const Tensor& src, int64_t base) {
  need_f32(t, "scatter_add");
  check_gather_shapes(t, d, idx, &src, "scatter_add");
  const std::vector<int64_t> iv = checked_indices(idx, "scatter_add", d, t.size(d), base);
  const std::vector<float> sv = source_values(src, idx);
  float* b = static_cast<float*>(t.storage()->data);
  for_each_target(t, d, idx, iv, [&](int64_t k, int64_t off) { b[off] += sv[(size_t)k]; });
}

void masked_fill_(Tensor& t, const Tensor& mask, float v) {
  need_f32(t, "masked_fill");
  need_defined(mask, "masked_fill");
  if (mask.shape() != t.shape())
    fail("masked_fill: the mask has shape ", shape_str(mask.shape()), ", the tensor ", shape_str(t.shape()));
  const std::vector<float> m = mask.to_vector();  // staged: the mask may be a view of t
  float* b = static_cast<float*>(t.storage()->data);
  for_each_offset(t, [&](int64_t k, int64_t o) {
    if (m[(size_t)k] != 0.f) b[o] = v;  // NaN != 0: true
  });
}

void index_fill_(Tensor& t, int d, const Tensor& idx, float v, int64_t base) {
  need_f32(t, "index_fill");
  check_dim(t, d, "index_fill");
  need_1d_index(idx, "index_fill");
  for (int64_t i : checked_indices(idx, "index_fill", d, t.size(d), base)) t.select(d, i).fill_(v);
}

Tensor permute(const Tensor& t, const std::vector<int>& perm) {
  need_defined(t, "permute");
  const int n = t.dim();
  if ((int)perm.size() != n)
    fail("permute: expected ", n, " dimensions for a tensor of shape ", shape_str(t.shape()), ", got ", perm.size());
  std::vector<bool> seen((size_t)n, false);
  for (int p : perm) {
    if (p < 0 || p >= n) fail("permute: dimension ", p + 1, " out of range (valid: 1..", n, ")");
    if (seen[(size_t)p]) fail("permute: dimension ", p + 1, " repeated (expected a permutation of 1..", n, ")");
    seen[(size_t)p] = true;
  }
  // Transpositions into place: at[j] = the original dimension now at position j.
  Tensor r = t;
  std::vector<int> at((size_t)n);
  for (int j = 0; j < n; ++j) at[(size_t)j] = j;
  for (int i = 0; i < n; ++i) {
    int j = i;
    while (at[(size_t)j] != perm[(size_t)i]) ++j;
    if (j != i) {
      r = r.transpose(i, j);
      std::swap(at[(size_t)i], at[(size_t)j]);
    }
  }
  return r;
}

Tensor flip(const Tensor& t, int d) {
  check_dim(t, d, "flip");
  const int64_t n = t.size(d);
  std::vector<int64_t> sel((size_t)n);
  for (int64_t i = 0; i < n; ++i) sel[(size_t)i] = n - 1 - i;
  return select_slices(t, d, sel);
}

Tensor invert_permutation(const Tensor& p, int64_t base) {
  need_1d_index(p, "invert_permutation");
  const int64_t n = p.size(0);
  if (n > kMaxI32) fail("invert_permutation: ", n, " values are too many for i32");
  const std::vector<int64_t> v = index_values(p, "invert_permutation");
  Tensor r = Tensor::empty({n}, DType::I32);
  int32_t* q = r.data<int32_t>();
  std::vector<int64_t> where((size_t)n, -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x = v[(size_t)i];
    if (x < base || x - base >= n)
      fail("invert_permutation: value ", x, " at position ", i + base, " out of range (valid: ", base, "..", n - 1 + base,
           ")");
    if (where[(size_t)(x - base)] >= 0)
      fail("invert_permutation: value ", x, " appears at positions ", where[(size_t)(x - base)] + base, " and ", i + base,
           " (not a permutation)");
    where[(size_t)(x - base)] = i;
    q[x - base] = (int32_t)(i + base);
  }
  return r;
}

}  // namespace qf

// qforge — dense n-d tensors with views (Torch7 TH style).
//
// A Tensor is a view (offset, shape, strides) onto a refcounted Storage. Views made by
// narrow/select/transpose/rows/cols share the storage, so writing through a view writes
// the parent. Compute is f32; f16/bf16/i8/u8/i32 are storage types converted by to()/copy_.
// The Storage carries a Device tag (CPU only today) so a CUDA backend can slot in later.
#pragma once
#include <Eigen/Core>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace qf {

enum class DType : uint8_t { F32, F16, BF16, I8, U8, I32 };
enum class Device : uint8_t { CPU };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // "f32", "f16", "bf16", "i8", "u8", "i32"

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[3, 4]"

// Flat bytes. `owner` keeps the memory alive: a heap buffer today, an mmap later.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<void> owner;
  static std::shared_ptr<Storage> alloc(size_t nbytes, bool zero = true);  // zero-filled unless !zero; 64-byte aligned
};

using MatRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatMap = Eigen::Map<MatRM, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
using CMatMap = Eigen::Map<const MatRM, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

class Tensor {
 public:
  Tensor() = default;  // undefined (no storage)
  static Tensor empty(const Shape& shape, DType dt = DType::F32);  // zero-filled
  static Tensor zeros(const Shape& shape, DType dt = DType::F32) { return empty(shape, dt); }
  // Contents undefined: for outputs a kernel overwrites entirely (saves the zero fill).
  static Tensor uninitialized(const Shape& shape, DType dt = DType::F32);
  static Tensor full(const Shape& shape, float v);
  static Tensor from_data(const Shape& shape, const std::vector<float>& values);  // f32
  // Wrap existing storage (e.g. a loaded file); checks the view stays inside it.
  static Tensor wrap(std::shared_ptr<Storage> st, DType dt, const Shape& shape, int64_t offset = 0);

  bool defined() const { return (bool)st_; }
  DType dtype() const { return dt_; }
  Device device() const { return st_ ? st_->device : Device::CPU; }
  int dim() const { return (int)shape_.size(); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t size(int d) const;
  int64_t stride(int d) const;
  int64_t numel() const;
  int64_t offset() const { return off_; }
  bool is_contiguous() const;
  bool same_storage(const Tensor& o) const { return st_ == o.st_; }
  const std::shared_ptr<Storage>& storage() const { return st_; }

  // ---- views: share storage ----
  Tensor narrow(int d, int64_t start, int64_t len) const;
  Tensor select(int d, int64_t i) const;  // removes dimension d
  Tensor transpose(int d0, int d1) const;
  Tensor t() const;                        // 2-D transpose
  Tensor view(const Shape& shape) const;   // contiguous tensors only; one -1 allowed
  // numpy broadcasting as a view: size-1 dimensions (and new leading ones) repeat with stride 0;
  // -1 keeps a size. Read-only: writing into an expanded view is an error (check_writable).
  Tensor expand(const Shape& shape) const;
  bool is_expanded() const;  // some dimension of size > 1 has stride 0
  void check_writable(const char* op) const;  // errors on an expanded view
  Tensor rows(int64_t start, int64_t len) const { return narrow(0, start, len); }
  Tensor cols(int64_t start, int64_t len) const { return narrow(1, start, len); }

  // ---- copies ----
  Tensor contiguous() const;  // self if already contiguous
  Tensor clone() const;       // always a fresh contiguous copy, same dtype
  Tensor to(DType dt) const;  // fresh contiguous copy converted; float->int rounds half-even, saturates, NaN is an error
  void copy_(const Tensor& src);  // same shape, any dtypes
  void fill_(float v);

  // ---- element access (0-based, bounds-checked; values as f32) ----
  float get(const int64_t* idx, int n) const;
  void set(const int64_t* idx, int n, float v);
  float get(std::initializer_list<int64_t> idx) const { return get(idx.begin(), (int)idx.size()); }
  void set(std::initializer_list<int64_t> idx, float v) { set(idx.begin(), (int)idx.size(), v); }
  float item() const;  // numel()==1

  std::vector<float> to_vector() const;  // logical (row-major) order, f32

  // ---- raw access ----
  void* raw() const;  // pointer to element 0 of the view
  template <class T> T* data() const {
    check_ctype(sizeof(T), ctype_tag<T>());
    return static_cast<T*>(raw());
  }
  float* f32() const { return data<float>(); }

  // ---- Eigen: 2-D f32 views with arbitrary strides (no copy) ----
  MatMap mat() const;
  CMatMap cmat() const;

 private:
  template <class T> static constexpr int ctype_tag() {
    if constexpr (std::is_same_v<T, float>) return (int)DType::F32;
    else if constexpr (std::is_same_v<T, int32_t>) return (int)DType::I32;
    else if constexpr (std::is_same_v<T, int8_t>) return (int)DType::I8;
    else if constexpr (std::is_same_v<T, uint8_t>) return (int)DType::U8;
    else if constexpr (std::is_same_v<T, uint16_t>) return -16;  // f16 or bf16 bits
    else return -1;
  }
  void check_ctype(size_t sz, int tag) const;
  int64_t elem_offset(const int64_t* idx, int n) const;

  std::shared_ptr<Storage> st_;
  DType dt_ = DType::F32;
  int64_t off_ = 0;  // in elements
  Shape shape_, strides_;
};

// Calls fn(k, off) for every element of t in logical row-major order; k counts 0..numel-1,
// off is the element offset into storage (t.offset() included).
template <class Fn>
void for_each_offset(const Tensor& t, Fn&& fn) {
  const int nd = t.dim();
  const int64_t n = t.numel();
  if (n == 0) return;
  if (t.is_contiguous()) {
    for (int64_t k = 0; k < n; ++k) fn(k, t.offset() + k);
    return;
  }
  std::vector<int64_t> idx(nd, 0);
  int64_t off = t.offset();
  for (int64_t k = 0; k < n; ++k) {
    fn(k, off);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < t.size(d)) { off += t.stride(d); break; }
      off -= (t.size(d) - 1) * t.stride(d);
      idx[d] = 0;
    }
  }
}

}  // namespace qf

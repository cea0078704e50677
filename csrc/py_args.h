// fastmuon/csrc/py_args.h: checks of the Python arguments of the nanobind
// extensions (`fastmuon._blas`, `fastmuon._mlx_ext`): arrays viewed without a
// copy, and dicts read by key. Every error reads "fn(): `name` <what is
// wrong>", naming the function and the argument (or the dict entry) at fault.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace fastmuon::py_args {

namespace nb = nanobind;

// What the kernels take: C-contiguous CPU arrays of T, viewed without a copy
// (DLPack or the buffer protocol); const T accepts read-only arrays too.
template <typename T>
using CpuArray = nb::ndarray<T, nb::c_contig, nb::device::cpu>;

template <typename A>
std::string shape_str(const A& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (a.ndim() == 1 || i + 1 < a.ndim()) {
      s += i + 1 < a.ndim() ? ", " : ",";
    }
  }
  return s + ")";
}

inline std::string dtype_str(nb::dlpack::dtype dt) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    default: break;
  }
  return std::string(kind) + std::to_string(dt.bits);
}

inline std::string type_str(nb::handle obj) {
  return nb::type_name(obj.type()).c_str();
}

inline std::string arg_error(const char* fn, const char* name,
                             const std::string& what) {
  return std::string(fn) + "(): `" + name + "` " + what;
}

[[noreturn]] inline void bad_value(const char* fn, const char* name,
                                   const std::string& what) {
  throw nb::value_error(arg_error(fn, name, what).c_str());
}

[[noreturn]] inline void bad_type(const char* fn, const char* name,
                                  const std::string& what) {
  throw nb::type_error(arg_error(fn, name, what).c_str());
}

// Whether `obj` is an array (DLPack or the buffer protocol) of any kind.
inline bool is_array(nb::handle obj) {
  nb::ndarray<nb::ro> any;
  return nb::try_cast(obj, any, /*convert=*/false);
}

// `obj` as a CpuArray<T>, or raise naming the argument and the first of:
// not an array (TypeError), read-only where T is writable, not in CPU memory
// (ValueError), another dtype (TypeError), another layout (ValueError).
// nanobind's typed cast decides; the untyped views below only explain a
// refusal.
template <typename T>
CpuArray<T> as_array(nb::handle obj, const char* fn, const char* name) {
  CpuArray<T> arr;
  if (nb::try_cast(obj, arr, /*convert=*/false)) {
    return arr;
  }
  nb::ndarray<nb::ro> any;
  if (!nb::try_cast(obj, any, /*convert=*/false)) {
    bad_type(fn, name,
             "must be a CPU array that supports DLPack or the buffer protocol "
             "(numpy.ndarray, torch CPU tensor without requires_grad, ...); "
             "got " + type_str(obj));
  }
  nb::ndarray<> writable;
  if (!std::is_const_v<T> && !nb::try_cast(obj, writable, /*convert=*/false)) {
    bad_value(fn, name, "is read-only; pass a writable array");
  }
  if (any.device_type() != nb::device::cpu::value) {
    bad_value(fn, name, "must live in CPU memory (DLPack device type " +
                            std::to_string(any.device_type()) + ")");
  }
  using Scalar = std::remove_const_t<T>;
  if (any.dtype() != nb::dtype<Scalar>()) {
    bad_type(fn, name,
             std::string("must have dtype ") +
                 (std::is_same_v<Scalar, float> ? "float32" : "float64") +
                 ", got " + dtype_str(any.dtype()));
  }
  bad_value(fn, name,
            "must be C-contiguous (row-major, no gaps); got a strided view of "
            "shape " + shape_str(any) +
                ". Pass a contiguous copy (np.ascontiguousarray / "
                "tensor.contiguous()).");
}

// The keys of a dict argument, as interned Python strings made once (and
// kept for the life of the process), so that looking them up in a dict of
// literal keys compares pointers. Construct it as a function-local static,
// with the GIL held.
template <size_t N>
class Keys {
 public:
  explicit Keys(const std::array<const char*, N>& names) : names_(names) {
    for (size_t i = 0; i < N; ++i) {
      objects_[i] = PyUnicode_InternFromString(names_[i]);
      if (objects_[i] == nullptr) {
        throw nb::python_error();
      }
    }
  }

  const char* name(size_t i) const { return names_[i]; }
  PyObject* object(size_t i) const { return objects_[i]; }

  // Position of `name`, which must be one of the keys.
  size_t index(const char* name) const {
    for (size_t i = 0; i < N; ++i) {
      if (std::strcmp(names_[i], name) == 0) {
        return i;
      }
    }
    throw std::logic_error(std::string("no key ") + name);
  }

  bool contains(PyObject* key) const {
    for (size_t i = 0; i < N; ++i) {
      if (PyUnicode_Check(key) &&
          PyUnicode_CompareWithASCIIString(key, names_[i]) == 0) {
        return true;
      }
    }
    return false;
  }

  // "'a', 'b' and 'c'"
  std::string listed() const {
    std::string s;
    for (size_t i = 0; i < N; ++i) {
      s += (i == 0 ? "'" : i + 1 < N ? ", '" : " and '") +
          std::string(names_[i]) + "'";
    }
    return s;
  }

 private:
  std::array<const char*, N> names_;
  std::array<PyObject*, N> objects_{};
};

template <typename T>
constexpr const char* python_type_name() {
  if constexpr (std::is_same_v<T, bool>) {
    return "a bool";
  } else if constexpr (std::is_integral_v<T>) {
    return "an int";
  } else {
    return "a float";
  }
}

// A dict argument `name` of `fn` that must hold exactly `keys`, read by key:
// ValueError for a missing or an unknown key, TypeError for anything but a
// dict or for a value that does not convert ("fn(): `name['key']` must be a
// float, got str").
template <size_t N>
class DictArg {
 public:
  DictArg(nb::handle obj, const char* fn, std::string name,
          const Keys<N>& keys)
      : fn_(fn), name_(std::move(name)), keys_(keys) {
    if (!PyDict_Check(obj.ptr())) {
      bad_type(fn_, name_.c_str(),
               "must be a dict with the keys " + keys_.listed() + ", got " +
                   type_str(obj));
    }
    for (size_t i = 0; i < N; ++i) {
      values_[i] = PyDict_GetItemWithError(obj.ptr(), keys_.object(i));
      if (values_[i] == nullptr) {
        if (PyErr_Occurred()) {
          throw nb::python_error();
        }
        bad_value(fn_, name_.c_str(),
                  "has no key '" + std::string(keys_.name(i)) + "' (it needs " +
                      keys_.listed() + ")");
      }
    }
    if (PyDict_Size(obj.ptr()) != static_cast<Py_ssize_t>(N)) {
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      while (PyDict_Next(obj.ptr(), &pos, &key, &value)) {
        if (!keys_.contains(key)) {
          bad_value(fn_, name_.c_str(),
                    "has an unknown key " +
                        std::string(nb::repr(key).c_str()) + " (its keys are " +
                        keys_.listed() + ")");
        }
      }
    }
  }

  // The value of `key` (a borrowed reference, valid while the dict is).
  nb::handle item(const char* key) const { return values_[keys_.index(key)]; }

  // Where the value of `key` is named in errors: "name['key']".
  std::string entry(const char* key) const {
    return name_ + "['" + key + "']";
  }

  // The value of `key` as a T (double, bool, an integer type), converted as
  // nanobind converts arguments.
  template <typename T>
  T get(const char* key) const {
    const nb::handle value = item(key);
    T out{};
    if (!nb::try_cast(value, out, /*convert=*/true)) {
      bad_type(fn_, entry(key).c_str(),
               std::string("must be ") + python_type_name<T>() + ", got " +
                   type_str(value));
    }
    return out;
  }

 private:
  const char* fn_;
  std::string name_;
  const Keys<N>& keys_;
  std::array<PyObject*, N> values_{};
};

} // namespace fastmuon::py_args

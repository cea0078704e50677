// fastmuon/csrc/plan_args.h: the `plan` argument of the extension functions
// that orthogonalize (`_blas.orthogonalize`, `orthogonalize_stacks`,
// `muon_step`, `_mlx_ext.orthogonalize`), read by key into an
// OrthogonalizePlan. Python builds the dict in one place,
// fastmuon.native.kernel_plan. A new plan field is its key there and, here,
// its key in plan_from_mapping's `keys`, its line in the plan it builds and
// its entry in FASTMUON_PLAN_DOC (besides its OrthogonalizePlan member,
// iteration.h, and the torch operator's schema, fastmuon/torch/native.py).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nanobind/stl/array.h>
#include <nanobind/stl/vector.h>

#include "iteration.h"
#include "py_args.h"

// The `plan` argument in the extensions' docstrings (an "Args:" entry).
#define FASTMUON_PLAN_DOC                                                    \
  "    plan (dict): the iteration, as fastmuon.native.kernel_plan builds\n"  \
  "        it, with exactly the keys\n"                                      \
  "        coefficients: one (a, b, c) row per step, at least one, all\n"   \
  "            finite: a float64, C-contiguous (steps, 3) array, or a\n"    \
  "            sequence of 3-sequences of floats;\n"                        \
  "        norm_scale (float): positive factor on the Frobenius norm;\n"    \
  "        eps (float): non-negative constant added to the scaled norm;\n"  \
  "        gram (bool): iterate on the Gram matrix instead of X;\n"         \
  "        gram_restart_every (int): restart period (>= 1) of the Gram\n"   \
  "            iteration; ignored when gram is false;\n"                   \
  "        gram_restarts (int): at most this many restarts (-1: any);\n"  \
  "        gram_min_rows (int), gram_min_aspect (int): a wide m x n\n"    \
  "            matrix with m < gram_min_rows or n < gram_min_aspect * m\n"\
  "            takes the standard iteration even with gram;\n"            \
  "        normalize (bool): divide each matrix by its scaled norm plus\n" \
  "            eps first; false when the caller has (from float64);\n"     \
  "        aol (bool): AOL row scaling of the normalized matrix, whose\n"  \
  "            scaled Gram matrix feeds the first step;\n"                 \
  "        standard_coefficients: (a, b, c) rows, possibly none, as\n"    \
  "            coefficients: where given, a matrix that does not take\n"  \
  "            the Gram form runs these, without AOL (method auto);\n"     \
  "        standard_norm_scale (float): their positive norm_scale.\n"

namespace fastmuon {

namespace nb = nanobind;

// The (a, b, c) rows of `obj`: a (steps, 3) float64 C-contiguous CPU array,
// or, if `obj` is no array, a sequence of 3-sequences of floats. An array of
// another dtype or layout is refused (as `name`), not converted.
inline std::vector<std::array<double, 3>> coefficients_from(
    nb::handle obj, const char* fn, const char* name,
    bool allow_empty = false) {
  std::vector<std::array<double, 3>> rows;
  py_args::CpuArray<const double> coef;
  if (!nb::try_cast(obj, coef, /*convert=*/false)) {
    if (py_args::is_array(obj)) {
      // raises, naming what is wrong: the dtype, the layout, the device
      coef = py_args::as_array<const double>(obj, fn, name);
    } else if (!nb::try_cast(obj, rows, /*convert=*/true)) {
      py_args::bad_type(fn, name,
                        "must be a (steps, 3) float64 array or a sequence of "
                        "(a, b, c) triples of floats, got " +
                            py_args::type_str(obj));
    } else {
      return rows;
    }
  }
  if (coef.ndim() != 2 || coef.shape(1) != 3 ||
      coef.shape(0) < (allow_empty ? 0 : 1)) {
    py_args::bad_value(fn, name,
                       std::string("must have shape (steps, 3) with steps >= ") +
                           (allow_empty ? "0" : "1") + ", got shape " +
                           py_args::shape_str(coef));
  }
  const double* c = coef.data();
  for (size_t i = 0; i < coef.shape(0); ++i) {
    rows.push_back({c[3 * i], c[3 * i + 1], c[3 * i + 2]});
  }
  return rows;
}

// The plan of a call to `fn` from its `plan` argument: a dict with exactly
// the keys "coefficients" (see coefficients_from), "norm_scale", "eps",
// "gram", "gram_restart_every", "gram_restarts", "gram_min_rows",
// "gram_min_aspect", "normalize", "aol", "standard_coefficients" (possibly
// empty) and "standard_norm_scale", the fields of
// OrthogonalizePlan; checked by check_plan. Errors name `fn` and the key at
// fault ("orthogonalize(): `plan['norm_scale']` must be finite and positive,
// got 0.000000").
inline OrthogonalizePlan plan_from_mapping(nb::handle obj, const char* fn) {
  static const py_args::Keys<12> keys(
      {"coefficients", "norm_scale", "eps", "gram", "gram_restart_every",
       "gram_restarts", "gram_min_rows", "gram_min_aspect", "normalize",
       "aol", "standard_coefficients", "standard_norm_scale"});
  const py_args::DictArg<12> plan_arg(obj, fn, "plan", keys);
  OrthogonalizePlan plan{
      coefficients_from(plan_arg.item("coefficients"), fn,
                        plan_arg.entry("coefficients").c_str()),
      plan_arg.get<double>("norm_scale"),
      plan_arg.get<double>("eps"),
      plan_arg.get<bool>("gram"),
      plan_arg.get<int64_t>("gram_restart_every"),
      plan_arg.get<int64_t>("gram_restarts"),
      plan_arg.get<int64_t>("gram_min_rows"),
      plan_arg.get<int64_t>("gram_min_aspect"),
      plan_arg.get<bool>("normalize"),
      plan_arg.get<bool>("aol"),
      coefficients_from(plan_arg.item("standard_coefficients"), fn,
                        plan_arg.entry("standard_coefficients").c_str(),
                        /*allow_empty=*/true),
      plan_arg.get<double>("standard_norm_scale"),
  };
  check_plan(plan, [&](const char* field) {
    return std::string(fn) + "(): `" + plan_arg.entry(field) + "`";
  });
  return plan;
}

} // namespace fastmuon

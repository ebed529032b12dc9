#pragma once

// Bookworm's Abseil (20220623) has no RETURN_IF_ERROR / ASSIGN_OR_RETURN; these are the two we use.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PARLEY_CONCAT_INNER(a, b) a##b
#define PARLEY_CONCAT(a, b) PARLEY_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status _parley_status = (expr);          \
    if (!_parley_status.ok()) return _parley_status; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(PARLEY_CONCAT(_parley_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(*tmp)

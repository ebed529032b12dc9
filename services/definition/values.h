#pragma once

// The types of config options, action parameters and relation data keys. Values are strings in
// the engine; a type says which strings are valid.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace parley::services {

enum class ValueType { kString, kInt, kFloat, kBool };

// "string", "int", "float" or "bool", as definitions write the type.
absl::string_view ValueTypeName(ValueType type);

// Checks that `text` is a value of `type`: int is a decimal 64-bit integer, float a decimal or
// exponent number (an int is a float too), bool is `true` or `false`; any text is a string.
absl::Status CheckValue(ValueType type, absl::string_view text);

}  // namespace parley::services

#include "services/definition/values.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/definition/names.h"

namespace parley::services {

absl::string_view ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kString:
      return "string";
    case ValueType::kInt:
      return "int";
    case ValueType::kFloat:
      return "float";
    case ValueType::kBool:
      return "bool";
  }
  return "";
}

absl::Status CheckValue(ValueType type, absl::string_view text) {
  bool ok = true;
  const bool padded =
      !text.empty() && (absl::ascii_isspace(static_cast<unsigned char>(text[0])) ||
                        absl::ascii_isspace(static_cast<unsigned char>(text.back())));
  switch (type) {
    case ValueType::kString:
      return absl::OkStatus();
    case ValueType::kInt: {
      int64_t v = 0;
      ok = !padded && absl::SimpleAtoi(text, &v);
      break;
    }
    case ValueType::kFloat: {
      double v = 0;
      ok = !padded && absl::SimpleAtod(text, &v) && std::isfinite(v);
      break;
    }
    case ValueType::kBool:
      ok = text == "true" || text == "false";
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("expected ", definition_internal::Article(type), ", got '", text, "'"));
}

}  // namespace parley::services

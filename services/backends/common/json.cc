#include "services/backends/common/json.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"

namespace parley::services {

using google::protobuf::Value;

absl::StatusOr<Value> ParseJson(absl::string_view text) {
  Value value;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(text.data(), text.size()), &value);
  if (!status.ok()) {
    // The parser's message quotes the input on later lines, with a caret: keep the reason.
    std::string why(status.message().data(), status.message().size());
    why = std::string(absl::StripAsciiWhitespace(why.substr(0, why.find('\n'))));
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", why.empty() ? "?" : why));
  }
  return value;
}

absl::StatusOr<const Value*> ResolveJsonPointer(const Value& doc, absl::string_view pointer) {
  if (pointer.empty()) return &doc;
  if (pointer[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON pointer '", pointer, "' does not start with '/'"));
  }
  const Value* at = &doc;
  std::string path;  // the part resolved so far, for errors
  for (absl::string_view raw : absl::StrSplit(pointer.substr(1), '/')) {
    const std::string token = absl::StrReplaceAll(raw, {{"~1", "/"}, {"~0", "~"}});
    const std::string where = path.empty() ? "the top-level value" : absl::StrCat("'", path, "'");
    if (at->has_struct_value()) {
      const auto& fields = at->struct_value().fields();
      auto it = fields.find(token);
      if (it == fields.end()) {
        return absl::NotFoundError(
            absl::StrCat("JSON pointer '", pointer, "': ", where, " has no member '", token, "'"));
      }
      at = &it->second;
    } else if (at->has_list_value()) {
      size_t index = 0;
      const bool digits = !token.empty() && std::all_of(token.begin(), token.end(), [](char c) {
        return absl::ascii_isdigit(c);
      }) && (token.size() == 1 || token[0] != '0');
      if (!digits || !absl::SimpleAtoi(token, &index) ||
          index >= static_cast<size_t>(at->list_value().values_size())) {
        return absl::NotFoundError(absl::StrCat("JSON pointer '", pointer, "': ", where,
                                                " is an array of ", at->list_value().values_size(),
                                                " items, with no item '", token, "'"));
      }
      at = &at->list_value().values(static_cast<int>(index));
    } else {
      return absl::NotFoundError(absl::StrCat("JSON pointer '", pointer, "': ", where, " is ",
                                              ToJson(*at), ", not an object or array"));
    }
    absl::StrAppend(&path, "/", raw);
  }
  return at;
}

namespace {

// A scalar as protobuf writes it (strings quoted and escaped, numbers shortest).
void AppendScalar(std::string& out, const Value& value) {
  std::string text;
  // Serializing a scalar Value cannot fail except on NaN or infinity, which no parse produces.
  if (!google::protobuf::util::MessageToJsonString(value, &text).ok()) text = "null";
  out += text;
}

void AppendJson(std::string& out, const Value& value) {
  if (value.has_struct_value()) {
    // Members in name order: protobuf's map order is unspecified, and a fact's text must not
    // change when the document does not.
    const auto& fields = value.struct_value().fields();
    std::vector<const std::string*> names;
    for (const auto& [name, unused] : fields) names.push_back(&name);
    std::sort(names.begin(), names.end(), [](auto* a, auto* b) { return *a < *b; });
    out += '{';
    for (size_t i = 0; i < names.size(); ++i) {
      if (i > 0) out += ',';
      Value key;
      key.set_string_value(*names[i]);
      AppendScalar(out, key);
      out += ':';
      AppendJson(out, fields.at(*names[i]));
    }
    out += '}';
  } else if (value.has_list_value()) {
    out += '[';
    for (int i = 0; i < value.list_value().values_size(); ++i) {
      if (i > 0) out += ',';
      AppendJson(out, value.list_value().values(i));
    }
    out += ']';
  } else {
    AppendScalar(out, value);
  }
}

}  // namespace

std::string ToJson(const Value& value) {
  std::string out;
  AppendJson(out, value);
  return out;
}

std::string JsonValueText(const Value& value) {
  if (value.has_string_value()) return value.string_value();
  return ToJson(value);
}

void JsonString(std::string& out, absl::string_view s) {
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          if (c < 0x20 || c == 0x7f) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    // Length and minimum value of a multi-byte sequence starting with `c`.
    size_t n = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      n = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 4;
      cp = c & 0x07;
    }
    bool valid = n != 0 && i + n <= s.size();
    for (size_t k = 1; valid && k < n; ++k) {
      const unsigned char d = s[i + k];
      if ((d & 0xc0) != 0x80) valid = false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (valid && (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) valid = false;
    if (valid) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  out += '"';
}

void JsonMap(std::string& out, const std::map<std::string, std::string>& m) {
  out += '{';
  bool first = true;
  for (const auto& [k, v] : m) {
    if (!first) out += ',';
    first = false;
    JsonString(out, k);
    out += ':';
    JsonString(out, v);
  }
  out += '}';
}

void JsonList(std::string& out, const std::vector<std::string>& l) {
  out += '[';
  for (size_t i = 0; i < l.size(); ++i) {
    if (i > 0) out += ',';
    JsonString(out, l[i]);
  }
  out += ']';
}

}  // namespace parley::services

#pragma once

// JSON for backends: read (HTTP API responses) through protobuf's own JSON parser into
// google::protobuf::Value, so Parley needs no JSON library of its own; written (the context file
// of process actions, Ansible variables) by the few appenders below.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/struct.pb.h"

namespace parley::services {

// Parses one JSON document (any value: object, array, string, number, bool or null).
// INVALID_ARGUMENT with the parser's reason when `text` is not JSON.
absl::StatusOr<google::protobuf::Value> ParseJson(absl::string_view text);

// The value `pointer` (RFC 6901: "" is the whole document, "/a/0/b~1c" is member "b/c" of item 0
// of member "a") designates in `doc`. NOT_FOUND names the part of the pointer that does not
// resolve; INVALID_ARGUMENT for a malformed pointer. The result points into `doc`.
absl::StatusOr<const google::protobuf::Value*> ResolveJsonPointer(
    const google::protobuf::Value& doc, absl::string_view pointer);

// A value as fact text: a string as it is (no quotes); null, bools and numbers as JSON writes them
// (`null`, `true`, `42`, `2.5`); objects and arrays as ToJson writes them.
std::string JsonValueText(const google::protobuf::Value& value);

// `value` as compact JSON, object members sorted by name (the same document, the same text).
std::string ToJson(const google::protobuf::Value& value);

// Appends a JSON string, object or array of strings to `out`. Values are bytes: invalid UTF-8
// becomes U+FFFD, so the document is always valid.
void JsonString(std::string& out, absl::string_view s);
void JsonMap(std::string& out, const std::map<std::string, std::string>& m);
void JsonList(std::string& out, const std::vector<std::string>& l);

}  // namespace parley::services

#pragma once

// Internal to services/backends/process/: the JSON context file a program finds in
// PARLEY_CONTEXT — the unit, service and handler, the event with its parameters (and relation),
// the config with defaults, the facts and the data of every relation
// (docs/service-definitions.md, "The context file"; its schema is docs/context-file.schema.json,
// which tests check this against). Written with services/backends/common/json.h.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"
#include "parley/v1/kb.pb.h"

namespace parley::services::process {

// The file's "version" member: the version of docs/context-file.schema.json it follows. A change
// that could break a reader (a member removed, renamed or given another type) makes a new version
// and a new schema; a new member does not.
inline constexpr int kContextVersion = 1;

// The context of the run `ctx` of a unit of `service`, `config` being the run's config with
// defaults filled in; one JSON object and a newline.
std::string ContextJson(const engine::RunContext& ctx, absl::string_view service,
                        const std::map<std::string, std::string>& config);

// Appends the members that say which relation `r` is — "id", "endpoint", "interface" (with
// `with_interface`), "remote_service", "remote_units" — without the braces: the context file and
// `relation list` describe relations alike.
void AppendRelationFields(std::string& out, const v1::RelationRecord& r, bool with_interface);

// Creates `path` (mode 0600; it must not exist) holding ContextJson.
absl::Status WriteContextFile(const std::string& path, const engine::RunContext& ctx,
                              absl::string_view service,
                              const std::map<std::string, std::string>& config);

}  // namespace parley::services::process

#include "services/backends/process/context_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/run_context.h"
#include "parley/v1/kb.pb.h"
#include "services/backends/common/json.h"
#include "services/backends/process/fd.h"

namespace parley::services::process {
namespace {

absl::Status WriteFile(const std::string& path, absl::string_view data) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Errno(absl::StrCat("cannot create ", path));
  while (!data.empty()) {
    ssize_t n = write(fd.get(), data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno(absl::StrCat("cannot write ", path));
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

}  // namespace

void AppendRelationFields(std::string& out, const v1::RelationRecord& r, bool with_interface) {
  out += "\"id\":";
  JsonString(out, r.relation_id());
  out += ",\"endpoint\":";
  JsonString(out, r.endpoint());
  if (with_interface) {
    out += ",\"interface\":";
    JsonString(out, r.interface());
  }
  out += ",\"remote_service\":";
  JsonString(out, r.remote_service());
  out += ",\"remote_units\":";
  JsonList(out, {r.remote_units().begin(), r.remote_units().end()});
}

std::string ContextJson(const engine::RunContext& ctx, absl::string_view service,
                        const std::map<std::string, std::string>& config) {
  std::string out = absl::StrCat("{\"version\":", kContextVersion, ",\"unit\":");
  JsonString(out, ctx.unit());
  out += ",\"service\":";
  JsonString(out, service);
  out += ",\"handler\":";
  JsonString(out, ctx.handler());
  const v1::Event& e = ctx.event();
  out += ",\"event\":{\"name\":";
  JsonString(out, e.name());
  out += ",\"params\":";
  JsonMap(out, {e.params().begin(), e.params().end()});
  if (e.has_relation()) {
    out += ",\"relation_id\":";
    JsonString(out, e.relation().relation_id());
    out += ",\"endpoint\":";
    JsonString(out, e.relation().endpoint());
    out += ",\"remote_unit\":";
    JsonString(out, e.relation().remote_unit());
  }
  out += "},\"config\":";
  JsonMap(out, config);
  out += ",\"facts\":";
  JsonMap(out, ctx.Facts());
  out += ",\"relations\":[";
  bool first = true;
  for (const v1::RelationRecord* r : ctx.Relations()) {
    if (!first) out += ',';
    first = false;
    auto bag = [&](absl::string_view name) {
      auto data = ctx.Bag(r->relation_id(), name);
      JsonMap(out, data.ok() ? *data : std::map<std::string, std::string>{});
    };
    out += '{';
    AppendRelationFields(out, *r, /*with_interface=*/true);
    out += ",\"local_unit_data\":";
    bag("lu");
    out += ",\"local_service_data\":";
    bag("ls");
    out += ",\"remote_service_data\":";
    bag("rs");
    out += ",\"remote_unit_data\":{";
    for (int i = 0; i < r->remote_units_size(); ++i) {
      if (i > 0) out += ',';
      JsonString(out, r->remote_units(i));
      out += ':';
      bag(absl::StrCat("ru:", r->remote_units(i)));
    }
    out += "}}";
  }
  out += "]}\n";
  return out;
}

absl::Status WriteContextFile(const std::string& path, const engine::RunContext& ctx,
                              absl::string_view service,
                              const std::map<std::string, std::string>& config) {
  return WriteFile(path, ContextJson(ctx, service, config));
}

}  // namespace parley::services::process

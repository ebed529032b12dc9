#include "services/backends/ansible/ansible_backend.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "services/backends/common/json.h"
#include "services/backends/process/process_action.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

// A string Ansible must never template: its JSON decoder turns this object into an unsafe text.
std::string UnsafeJson(absl::string_view s) {
  std::string out = "{\"__ansible_unsafe\":";
  JsonString(out, s);
  out += '}';
  return out;
}

// `text` as a JSON value of `type`; a value that does not parse as its type stays a string.
std::string TypedJson(ValueType type, absl::string_view text) {
  switch (type) {
    case ValueType::kInt: {
      int64_t v = 0;
      if (absl::SimpleAtoi(text, &v)) return absl::StrCat(v);
      break;
    }
    case ValueType::kFloat: {
      double v = 0;
      if (absl::SimpleAtod(text, &v) && std::isfinite(v)) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%.17g", v);
        return buf;
      }
      break;
    }
    case ValueType::kBool:
      if (text == "true" || text == "false") return std::string(text);
      break;
    case ValueType::kString:
      break;
  }
  return UnsafeJson(text);
}

// A JSON object from keys and already encoded values.
std::string JsonObject(const std::map<std::string, std::string>& encoded) {
  std::string out = "{";
  for (const auto& [k, v] : encoded) {
    if (out.size() > 1) out += ',';
    JsonString(out, k);
    out += ':';
    out += v;
  }
  return out + "}";
}

std::string UnsafeMap(const std::map<std::string, std::string>& m) {
  std::map<std::string, std::string> encoded;
  for (const auto& [k, v] : m) encoded[k] = UnsafeJson(v);
  return JsonObject(encoded);
}

// Lines of `text`, without their '\n'.
std::vector<absl::string_view> Lines(absl::string_view text) {
  return absl::StrSplit(absl::StripSuffix(text, "\n"), '\n');
}

// "TASK [name] *****" -> "TASK [name]".
std::string Header(absl::string_view line) {
  const size_t end = line.find_last_not_of("* ");
  return std::string(line.substr(0, end == absl::string_view::npos ? 0 : end + 1));
}

bool IsTaskHeader(absl::string_view line) {
  return absl::StartsWith(line, "TASK [") || absl::StartsWith(line, "RUNNING HANDLER [");
}

bool IsFailure(absl::string_view line) {
  return absl::StartsWith(line, "fatal: ") || absl::StartsWith(line, "failed: ");
}

// The failing task in ansible's default output: its header, then its result lines, from the
// first failure line to the end of that block. Empty when no task failed (a syntax error, a
// missing file: ansible says why on stderr).
std::string FailedTask(absl::string_view out) {
  std::vector<absl::string_view> lines = Lines(out);
  size_t failure = lines.size();
  for (size_t i = lines.size(); i-- > 0;) {
    if (IsFailure(lines[i])) {
      failure = i;
      break;
    }
  }
  if (failure == lines.size()) return "";
  size_t header = failure;
  while (header > 0 && !IsTaskHeader(lines[header])) --header;
  std::vector<std::string> block;
  if (IsTaskHeader(lines[header])) block.push_back(Header(lines[header]));
  size_t first = failure;
  while (first > header + 1 && IsFailure(lines[first - 1])) --first;
  for (size_t i = first; i < lines.size() && !lines[i].empty(); ++i) {
    block.emplace_back(lines[i]);
  }
  return absl::StrJoin(block, "\n");
}

// The header of the last task ansible started, or empty.
std::string LastTask(absl::string_view out) {
  std::vector<absl::string_view> lines = Lines(out);
  for (size_t i = lines.size(); i-- > 0;) {
    if (IsTaskHeader(lines[i])) return Header(lines[i]);
  }
  return "";
}

class AnsibleRunner : public ProcessAction {
 public:
  AnsibleRunner(AnsibleAction action, std::map<std::string, ValueType> config_types,
                std::map<std::string, std::map<std::string, ValueType>> param_types,
                ProcessActionSetup setup)
      : ProcessAction(std::move(setup)),
        action_(std::move(action)),
        playbook_((fs::path(this->setup().dir) / action_.playbook).lexically_normal().string()),
        config_types_(std::move(config_types)),
        param_types_(std::move(param_types)) {}

 private:
  absl::StatusOr<Invocation> Prepare(engine::RunContext& ctx, const ProcessRun& run) override {
    const std::string home = run.temp_dir + "/ansible";
    if (!fs::create_directory(home)) {
      return absl::InternalError(absl::StrCat("cannot make ", home));
    }
    const std::string vars_file = run.temp_dir + "/vars.json";
    ASSIGN_OR_RETURN(std::string vars, VarsJson(ctx, run));
    RETURN_IF_ERROR(WriteNewFile(vars_file, vars));

    Invocation inv;
    ASSIGN_OR_RETURN(inv.program, ResolveProgram("ansible-playbook"));
    inv.name = absl::StrCat("ansible-playbook ", action_.playbook);
    inv.argv = {"ansible-playbook",          "-i", "localhost,", "-c", "local", playbook_, "-e",
                absl::StrCat("@", vars_file)};
    inv.env = {
        {"ANSIBLE_HOME", home},
        {"ANSIBLE_LOCAL_TEMP", home + "/tmp"},
        {"ANSIBLE_REMOTE_TEMP", home + "/remote-tmp"},
        {"ANSIBLE_PERSISTENT_CONTROL_PATH_DIR", home + "/pc"},
        {"ANSIBLE_SSH_CONTROL_PATH_DIR", home + "/cp"},
        {"ANSIBLE_RETRY_FILES_ENABLED", "False"},
        {"ANSIBLE_NOCOWS", "1"},
        {"ANSIBLE_NOCOLOR", "1"},
        {"ANSIBLE_STDOUT_CALLBACK", "default"},
        {"ANSIBLE_LOCALHOST_WARNING", "False"},
        // Ansible refuses to run without a UTF-8 locale.
        {"LANG", "C.UTF-8"},
        // What ansible printed is still there when it is killed at the timeout.
        {"PYTHONUNBUFFERED", "1"},
    };
    return inv;
  }

  std::string FailureDetail(const TailBuffer& out, const TailBuffer& err,
                            bool exited) const override {
    const size_t limit = setup().options.error_tail;
    std::vector<std::string> parts;
    if (exited) {
      std::string task = FailedTask(out.Kept());
      if (task.size() > limit) task = absl::StrCat("...", task.substr(task.size() - limit));
      parts.push_back(task.empty() ? DescribeTail("stdout", out, limit)
                                   : absl::StrCat("failed task: ", Printable(task)));
    } else {
      std::string task = LastTask(out.Kept());
      parts.push_back(task.empty() ? "no task had started"
                                   : absl::StrCat("running ", Printable(task)));
    }
    if (err.total() > 0 || !exited) parts.push_back(DescribeTail("stderr", err, limit));
    return absl::StrJoin(parts, "; ");
  }

  absl::StatusOr<std::string> VarsJson(engine::RunContext& ctx, const ProcessRun& run) const {
    // Top-level variables, each already encoded.
    std::map<std::string, std::string> vars;
    vars["ansible_python_interpreter"] = "\"{{ ansible_playbook_python }}\"";
    for (const auto& [name, t] : action_.vars) {
      ASSIGN_OR_RETURN(std::string value, ExpandTemplate(t, ctx, setup().config_defaults));
      vars[name] = UnsafeJson(value);
    }
    vars["parley_unit"] = UnsafeJson(ctx.unit());
    vars["parley_service"] = UnsafeJson(run.service);
    vars["parley_handler"] = UnsafeJson(ctx.handler());
    vars["parley_unit_host"] = UnsafeJson(setup().options.unit_host);
    if (!run.state_dir.empty()) vars["parley_state_dir"] = UnsafeJson(run.state_dir);

    std::map<std::string, std::string> config;
    for (const auto& [k, v] : run.config) {
      auto type = config_types_.find(k);
      config[k] = TypedJson(type == config_types_.end() ? ValueType::kString : type->second, v);
    }
    vars["parley_config"] = JsonObject(config);
    vars["parley_facts"] = UnsafeMap(ctx.Facts());
    vars["parley_event"] = EventJson(ctx.event());
    vars["parley_relations"] = RelationsJson(ctx);
    return JsonObject(vars) + "\n";
  }

  std::string EventJson(const v1::Event& e) const {
    const std::map<std::string, ValueType>* types = nullptr;
    if (absl::StartsWith(e.name(), "action.")) {
      auto it = param_types_.find(e.name().substr(7));
      if (it != param_types_.end()) types = &it->second;
    }
    std::map<std::string, std::string> params;
    for (const auto& [k, v] : e.params()) {
      ValueType type = ValueType::kString;
      if (types != nullptr) {
        if (auto t = types->find(k); t != types->end()) type = t->second;
      }
      params[k] = TypedJson(type, v);
    }
    std::map<std::string, std::string> event;
    event["name"] = UnsafeJson(e.name());
    event["params"] = JsonObject(params);
    if (e.has_relation()) {
      event["relation_id"] = UnsafeJson(e.relation().relation_id());
      event["endpoint"] = UnsafeJson(e.relation().endpoint());
      event["remote_unit"] = UnsafeJson(e.relation().remote_unit());
    }
    return JsonObject(event);
  }

  std::string RelationsJson(const engine::RunContext& ctx) const {
    std::map<std::string, std::map<std::string, std::string>> by_endpoint;
    for (const auto& [name, info] : setup().endpoints) by_endpoint[name];
    for (const v1::RelationRecord* r : ctx.Relations()) {
      auto bag = [&](absl::string_view name) {
        auto data = ctx.Bag(r->relation_id(), name);
        return UnsafeMap(data.ok() ? *data : std::map<std::string, std::string>{});
      };
      std::map<std::string, std::string> units;
      for (const std::string& u : r->remote_units()) units[u] = bag(absl::StrCat("ru:", u));
      std::map<std::string, std::string> rel;
      rel["interface"] = UnsafeJson(r->interface());
      rel["remote_service"] = UnsafeJson(r->remote_service());
      rel["remote_units"] = JsonObject(units);
      rel["remote_service_data"] = bag("rs");
      rel["local_unit_data"] = bag("lu");
      rel["local_service_data"] = bag("ls");
      by_endpoint[r->endpoint()][r->relation_id()] = JsonObject(rel);
    }
    std::map<std::string, std::string> encoded;
    for (const auto& [endpoint, rels] : by_endpoint) encoded[endpoint] = JsonObject(rels);
    return JsonObject(encoded);
  }

  static absl::Status WriteNewFile(const std::string& path, absl::string_view data) {
    FILE* f = fopen(path.c_str(), "wx");
    if (f == nullptr) return absl::InternalError(absl::StrCat("cannot create ", path));
    const bool ok = fwrite(data.data(), 1, data.size(), f) == data.size();
    if (fclose(f) != 0 || !ok) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  }

  const AnsibleAction action_;
  const std::string playbook_;
  const std::map<std::string, ValueType> config_types_;
  // Action name -> parameter -> type.
  const std::map<std::string, std::map<std::string, ValueType>> param_types_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<engine::Action>> MakeAnsibleAction(const ServiceDefinition& def,
                                                                  const HandlerDef& handler,
                                                                  const ProcessOptions& options,
                                                                  BackendLog log) {
  const auto* ansible = std::get_if<AnsibleAction>(&handler.action.detail);
  if (ansible == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(def.file, ":", handler.action.line,
                                                   ": handler '", handler.name,
                                                   "': not an ansible action"));
  }
  for (const auto& [name, t] : ansible->vars) {
    if (absl::StartsWith(name, "parley_")) {
      return absl::InvalidArgumentError(
          absl::StrCat(t.origin, ": handler '", handler.name, "': variable '", name,
                       "': names starting with parley_ are the ansible backend's own"));
    }
  }
  std::map<std::string, ValueType> config_types;
  for (const ConfigOption& o : def.config) config_types[o.name] = o.type;
  std::map<std::string, std::map<std::string, ValueType>> param_types;
  for (const UserAction& a : def.actions) {
    for (const ActionParam& p : a.params) param_types[a.name][p.name] = p.type;
  }
  ASSIGN_OR_RETURN(ProcessActionSetup setup,
                   MakeProcessActionSetup(def, handler, options, std::move(log)));
  return std::make_unique<AnsibleRunner>(*ansible, std::move(config_types), std::move(param_types),
                                         std::move(setup));
}

}  // namespace parley::services

#include "services/backends/container/container_action.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "services/backends/common/http_client.h"
#include "services/backends/common/json.h"

namespace parley::services {
namespace {

using google::protobuf::Value;

// The API version every call names: Docker 20.10 and later, and Podman's compatible API, serve it.
constexpr char kApi[] = "/v1.41";
constexpr char kFactPrefix[] = "container.";
constexpr char kPortFactPrefix[] = "container.port.";

// The desired container, expanded for one run.
struct Desired {
  std::string image;
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  // Container port -> host port.
  std::map<int, int> ports;

  // A stable hash of all of it (FNV-1a 64 over length-prefixed fields), as 16 hex digits. Stable
  // across processes and versions, unlike absl::Hash: it is stored in a label.
  std::string Hash() const {
    uint64_t h = 14695981039346656037ull;
    auto add = [&h](absl::string_view s) {
      for (unsigned char c : absl::StrCat(s.size(), ":", s, ",")) {
        h ^= c;
        h *= 1099511628211ull;
      }
    };
    add(image);
    add(absl::StrCat(command.size()));
    for (const auto& c : command) add(c);
    add(absl::StrCat(env.size()));
    for (const auto& [k, v] : env) add(absl::StrCat(k, "=", v));
    add(absl::StrCat(ports.size()));
    for (const auto& [c, p] : ports) add(absl::StrCat(p, ":", c));
    return absl::StrFormat("%016x", h);
  }
};

Value Str(absl::string_view s) {
  Value v;
  v.set_string_value(std::string(s));
  return v;
}

// The struct member `name` of `v`, created as an empty object if need be.
Value& Member(Value& v, const std::string& name) {
  Value& m = (*v.mutable_struct_value()->mutable_fields())[name];
  if (!m.has_struct_value()) m.mutable_struct_value();
  return m;
}

// A string (or "") at `pointer` in `doc`.
std::string StringAt(const Value& doc, absl::string_view pointer) {
  auto v = ResolveJsonPointer(doc, pointer);
  return v.ok() && (*v)->has_string_value() ? (*v)->string_value() : "";
}

absl::StatusOr<int> ParsePort(absl::string_view s) {
  int port = 0;
  if (s.empty() ||
      !std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); }) ||
      !absl::SimpleAtoi(s, &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not a port from 1 to 65535"));
  }
  return port;
}

class ContainerRunner : public engine::Action {
 public:
  ContainerRunner(ContainerAction action, absl::Duration timeout,
                  std::map<std::string, std::string> defaults, const ContainerOptions& options,
                  BackendLog log)
      : action_(std::move(action)),
        timeout_(timeout),
        defaults_(std::move(defaults)),
        options_(options),
        log_(std::move(log)),
        socket_(options.socket.empty() ? DefaultContainerSocket() : options.socket) {}

  absl::Status Run(engine::RunContext& ctx) override {
    deadline_ = absl::Now() + timeout_;
    absl::Status s = Converge(ctx);
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat("handler '", ctx.handler(), "': ", s.message()));
  }

 private:
  absl::Status Converge(engine::RunContext& ctx) {
    const std::string name = ContainerName(ctx.unit());
    ASSIGN_OR_RETURN(std::optional<Value> current, Inspect(name));
    if (action_.state == ContainerAction::State::kAbsent) {
      if (current) {
        RETURN_IF_ERROR(
            Call("DELETE", absl::StrCat("/containers/", name, "?force=true"), {}, {204}).status());
        Log(ctx, absl::StrCat("removed ", name));
      }
      return ClearFacts(ctx, {});
    }

    ASSIGN_OR_RETURN(Desired desired, Expand(ctx));
    const std::string hash = desired.Hash();
    if (current && StringAt(*current, absl::StrCat("/Config/Labels/", kSpecLabel)) != hash) {
      // The spec changed: the container is replaced (a running one is given its grace to stop).
      if (Running(*current)) RETURN_IF_ERROR(Stop(name));
      RETURN_IF_ERROR(
          Call("DELETE", absl::StrCat("/containers/", name, "?force=true"), {}, {204}).status());
      Log(ctx, absl::StrCat("removed ", name, " to recreate it with a new spec"));
      current.reset();
    }
    if (!current) {
      RETURN_IF_ERROR(Create(name, desired, hash, ctx.unit()));
      Log(ctx, absl::StrCat("created ", name, " from ", desired.image));
      ASSIGN_OR_RETURN(current, Inspect(name));
      if (!current) {
        return absl::UnavailableError(
            absl::StrCat("container ", name, " is gone right after it was created"));
      }
    }
    const bool running = Running(*current);
    if (action_.state == ContainerAction::State::kRunning && !running) {
      RETURN_IF_ERROR(
          Call("POST", absl::StrCat("/containers/", name, "/start"), {}, {204, 304}).status());
      Log(ctx, absl::StrCat("started ", name));
    } else if (action_.state == ContainerAction::State::kStopped && running) {
      RETURN_IF_ERROR(Stop(name));
      Log(ctx, absl::StrCat("stopped ", name));
    }
    ASSIGN_OR_RETURN(current, Inspect(name));
    if (!current) {
      return absl::UnavailableError(absl::StrCat("container ", name, " is gone"));
    }
    return SetFacts(ctx, *current);
  }

  absl::StatusOr<Desired> Expand(engine::RunContext& ctx) const {
    Desired d;
    ASSIGN_OR_RETURN(d.image, ExpandTemplate(action_.image, ctx, defaults_));
    if (d.image.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          action_.image.origin, ": the image '", action_.image.source, "' expanded to nothing"));
    }
    for (const Template& t : action_.command) {
      ASSIGN_OR_RETURN(std::string arg, ExpandTemplate(t, ctx, defaults_));
      d.command.push_back(std::move(arg));
    }
    for (const auto& [k, t] : action_.env) {
      ASSIGN_OR_RETURN(d.env[k], ExpandTemplate(t, ctx, defaults_));
    }
    for (const Template& t : action_.ports) {
      ASSIGN_OR_RETURN(std::string mapping, ExpandTemplate(t, ctx, defaults_));
      const size_t colon = mapping.find(':');
      auto host = ParsePort(absl::string_view(mapping).substr(0, colon));
      auto container =
          ParsePort(colon == std::string::npos ? absl::string_view(mapping)
                                               : absl::string_view(mapping).substr(colon + 1));
      if (!host.ok() || !container.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(t.origin, ": port mapping '", t.source, "' expanded to '", mapping,
                         "': expected '<host port>:<container port>' or '<port>', ports from 1 "
                         "to 65535"));
      }
      d.ports[*container] = *host;
    }
    return d;
  }

  absl::Status Create(const std::string& name, const Desired& d, const std::string& hash,
                      const std::string& unit) {
    Value body;
    (*body.mutable_struct_value()->mutable_fields())["Image"] = Str(d.image);
    if (!d.command.empty()) {
      Value& cmd = (*body.mutable_struct_value()->mutable_fields())["Cmd"];
      for (const auto& c : d.command) *cmd.mutable_list_value()->add_values() = Str(c);
    }
    Value& env = (*body.mutable_struct_value()->mutable_fields())["Env"];
    env.mutable_list_value();
    for (const auto& [k, v] : d.env) {
      *env.mutable_list_value()->add_values() = Str(absl::StrCat(k, "=", v));
    }
    Value& labels = Member(body, "Labels");
    (*labels.mutable_struct_value()->mutable_fields())[kSpecLabel] = Str(hash);
    (*labels.mutable_struct_value()->mutable_fields())["parley.unit"] = Str(unit);
    Value& exposed = Member(body, "ExposedPorts");
    Value& bindings = Member(Member(body, "HostConfig"), "PortBindings");
    for (const auto& [container, host] : d.ports) {
      const std::string key = absl::StrCat(container, "/tcp");
      Member(exposed, key);
      Value binding;
      (*binding.mutable_struct_value()->mutable_fields())["HostPort"] = Str(absl::StrCat(host));
      *(*bindings.mutable_struct_value()->mutable_fields())[key]
           .mutable_list_value()
           ->add_values() = std::move(binding);
    }
    return Call("POST", absl::StrCat("/containers/create?name=", name), ToJson(body), {201})
        .status();
  }

  absl::Status Stop(const std::string& name) {
    const int64_t grace = std::max<int64_t>(
        0, absl::ToInt64Seconds(absl::Ceil(options_.stop_grace, absl::Seconds(1))));
    return Call("POST", absl::StrCat("/containers/", name, "/stop?t=", grace), {}, {204, 304})
        .status();
  }

  static bool Running(const Value& inspect) {
    auto v = ResolveJsonPointer(inspect, "/State/Running");
    return v.ok() && (*v)->has_bool_value() && (*v)->bool_value();
  }

  // The container's inspection, or nullopt when there is no such container.
  absl::StatusOr<std::optional<Value>> Inspect(const std::string& name) {
    const std::string path = absl::StrCat("/containers/", name, "/json");
    ASSIGN_OR_RETURN(HttpResponse r, Call("GET", path, {}, {200, 404}));
    if (r.status == 404) return std::nullopt;
    auto doc = ParseJson(r.body);
    if (!doc.ok()) return CallError("GET", path, doc.status().message());
    return std::optional<Value>(std::move(*doc));
  }

  absl::Status SetFacts(engine::RunContext& ctx, const Value& inspect) {
    std::map<std::string, std::string> facts;
    facts["container.id"] = StringAt(inspect, "/Id");
    facts["container.state"] = StringAt(inspect, "/State/Status");
    std::string ip = StringAt(inspect, "/NetworkSettings/IPAddress");
    if (ip.empty()) {
      // Without the default bridge, the address is that of a named network (the first by name).
      auto networks = ResolveJsonPointer(inspect, "/NetworkSettings/Networks");
      if (networks.ok() && (*networks)->has_struct_value()) {
        std::map<std::string, std::string> by_name;
        for (const auto& [n, v] : (*networks)->struct_value().fields()) {
          by_name[n] = StringAt(v, "/IPAddress");
        }
        for (const auto& [n, a] : by_name) {
          if (!a.empty()) {
            ip = a;
            break;
          }
        }
      }
    }
    facts["container.ip"] = ip;
    auto ports = ResolveJsonPointer(inspect, "/NetworkSettings/Ports");
    if (ports.ok() && (*ports)->has_struct_value()) {
      for (const auto& [key, bindings] : (*ports)->struct_value().fields()) {
        if (!absl::EndsWith(key, "/tcp")) continue;
        const std::string host = StringAt(bindings, "/0/HostPort");
        if (!host.empty()) {
          facts[absl::StrCat(kPortFactPrefix, key.substr(0, key.size() - 4))] = host;
        }
      }
    }
    RETURN_IF_ERROR(ClearFacts(ctx, facts));
    for (const auto& [fact, value] : facts) RETURN_IF_ERROR(ctx.Set(fact, value));
    return absl::OkStatus();
  }

  // Clears the `container.*` facts that are set and not in `keep`.
  static absl::Status ClearFacts(engine::RunContext& ctx,
                                 const std::map<std::string, std::string>& keep) {
    for (const auto& [fact, value] : ctx.Facts()) {
      if (absl::StartsWith(fact, kFactPrefix) && !keep.contains(fact)) {
        RETURN_IF_ERROR(ctx.Clear(fact));
      }
    }
    return absl::OkStatus();
  }

  // One API call; a status not in `ok` is an error with the daemon's message.
  absl::StatusOr<HttpResponse> Call(const std::string& method, const std::string& path,
                                    std::optional<std::string> body, std::vector<int> ok) {
    HttpRequest req;
    req.method = method;
    req.url = absl::StrCat("http://localhost", kApi, path);
    req.unix_socket = socket_;
    req.timeout = deadline_ - absl::Now();
    req.max_response_bytes = 4 << 20;  // an inspection is a few KiB
    if (body) {
      req.body = std::move(body);
      req.headers.emplace_back("Content-Type", "application/json");
    }
    auto r = SendHttpRequest(req);
    if (!r.ok()) {
      // The client's message starts with the method and URL; say what the URL is.
      return absl::Status(r.status().code(),
                          absl::StrCat("container API at ", socket_, ": ", r.status().message()));
    }
    if (std::find(ok.begin(), ok.end(), r->status) != ok.end()) return r;
    // Docker and Podman answer errors with {"message": "..."}.
    std::string message;
    if (auto doc = ParseJson(r->body); doc.ok()) message = StringAt(*doc, "/message");
    if (message.empty()) message = absl::CHexEscape(r->body.substr(0, 512));
    return CallError(
        method, path, absl::StrCat("status ", r->status, ": ", message),
        r->status == 404 ? absl::StatusCode::kNotFound : absl::StatusCode::kFailedPrecondition);
  }

  absl::Status CallError(absl::string_view method, absl::string_view path, absl::string_view why,
                         absl::StatusCode code = absl::StatusCode::kInternal) const {
    return absl::Status(
        code, absl::StrCat("container API at ", socket_, ": ", method, " ", kApi, path, ": ", why));
  }

  void Log(engine::RunContext& ctx, absl::string_view text) const {
    if (log_) log_(ctx.unit(), ctx.handler(), "container", text);
  }

  const ContainerAction action_;
  const absl::Duration timeout_;
  const std::map<std::string, std::string> defaults_;
  const ContainerOptions options_;
  const BackendLog log_;
  const std::string socket_;
  absl::Time deadline_;
};

}  // namespace

std::string DefaultContainerSocket() {
  const char* host = getenv("DOCKER_HOST");
  if (host != nullptr && absl::StartsWith(host, "unix://") && host[7] != '\0') {
    return std::string(host + 7);
  }
  return "/run/podman/podman.sock";
}

std::string ContainerName(absl::string_view unit) {
  const size_t slash = unit.rfind('/');
  std::string name = absl::StrCat(
      "parley-", unit.substr(0, slash == absl::string_view::npos ? unit.size() : slash), "-",
      slash == absl::string_view::npos ? "0" : unit.substr(slash + 1));
  for (char& c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != '-') c = '-';
  }
  return name;
}

absl::StatusOr<std::unique_ptr<engine::Action>> MakeContainerAction(const ServiceDefinition& def,
                                                                    const HandlerDef& handler,
                                                                    const ContainerOptions& options,
                                                                    BackendLog log) {
  const auto* container = std::get_if<ContainerAction>(&handler.action.detail);
  if (container == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("handler '", handler.name, "': not a container action"));
  }
  return std::make_unique<ContainerRunner>(*container, handler.timeout, ConfigDefaults(def),
                                           options, std::move(log));
}

}  // namespace parley::services

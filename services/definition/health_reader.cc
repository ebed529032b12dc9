#include "services/definition/health_reader.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/definition/names.h"

namespace parley::services::definition_internal {
namespace {

class HealthReader {
 public:
  explicit HealthReader(ServiceDefinition& def) : def_(def) {}

  absl::Status Read(const At& at) {
    if (!at.node.IsMap()) {
      return at.Error(absl::StrCat("expected a map of probes by name, got ", Describe(at.node)));
    }
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    if (entries.empty()) return at.Error("no probe: leave `health:` out for none");
    for (const auto& [name, probe_at] : entries) {
      RETURN_IF_ERROR(CheckName(probe_at, name, NameRule::kIdentifier, "probe name"));
      ProbeDef p;
      p.name = name;
      p.line = probe_at.line;
      RETURN_IF_ERROR(ReadProbe(probe_at, p));
      def_.health.push_back(std::move(p));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status ReadProbe(const At& at, ProbeDef& p) {
    if (!at.node.IsMap()) {
      return at.Error(
          absl::StrCat("expected a probe (a map with exec, tcp or http), got ", Describe(at.node)));
    }
    ASSIGN_OR_RETURN(Fields f, Fields::Read(at, {"description", "exec", "tcp", "http",
                                                 "initial_delay", "interval", "timeout",
                                                 "failure_threshold", "success_threshold"}));
    const At* kind = nullptr;
    absl::string_view kind_name;
    for (absl::string_view k : {"exec", "tcp", "http"}) {
      const At* a = f.Get(k);
      if (a == nullptr) continue;
      if (kind != nullptr) {
        return a->Error(absl::StrCat("a probe checks one thing: it has ", kind_name,
                                     " already (one of exec, tcp or http)"));
      }
      kind = a;
      kind_name = k;
    }
    if (kind == nullptr) return at.Error("the probe names no check: give one of exec, tcp or http");
    if (f.Get("exec") == kind) {
      p.kind = ProbeDef::Kind::kExec;
      RETURN_IF_ERROR(ReadExec(*kind, p));
    } else if (f.Get("tcp") == kind) {
      p.kind = ProbeDef::Kind::kTcp;
      RETURN_IF_ERROR(ReadTcp(*kind, p));
    } else {
      p.kind = ProbeDef::Kind::kHttp;
      RETURN_IF_ERROR(ReadHttp(*kind, p));
    }
    if (const At* d = f.Get("initial_delay")) {
      ASSIGN_OR_RETURN(p.initial_delay, ReadDelay(*d));
    }
    if (const At* d = f.Get("interval")) {
      ASSIGN_OR_RETURN(p.interval, ReadDuration(*d));
    }
    if (const At* d = f.Get("timeout")) {
      ASSIGN_OR_RETURN(p.timeout, ReadDuration(*d));
      if (p.timeout > p.interval) {
        return d->Error(absl::StrCat(
            "the timeout (", absl::FormatDuration(p.timeout), ") is longer than the interval (",
            absl::FormatDuration(p.interval), "): a check must end before the next one is due"));
      }
    } else if (p.timeout > p.interval) {
      p.timeout = p.interval;
    }
    if (const At* t = f.Get("failure_threshold")) {
      ASSIGN_OR_RETURN(int64_t v, ReadInt(*t, 1, 1000));
      p.failure_threshold = static_cast<uint32_t>(v);
    }
    if (const At* t = f.Get("success_threshold")) {
      ASSIGN_OR_RETURN(int64_t v, ReadInt(*t, 1, 1000));
      p.success_threshold = static_cast<uint32_t>(v);
    }
    return ReadText(f.Get("description")).status();
  }

  absl::Status ReadExec(const At& at, ProbeDef& p) {
    if (at.node.IsScalar()) {
      return at.Error(
          "expected the command as a list (program and arguments, no shell), such as "
          "[./bin/check, --quiet]");
    }
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, false));
    if (items.empty()) return at.Error("the command is empty");
    for (const At& item : items) {
      ASSIGN_OR_RETURN(Template t, ReadTemplate(item));
      p.command.push_back(std::move(t));
    }
    if (!p.command[0].IsLiteral()) {
      return items[0].Error("the program must be written out, not a template");
    }
    return absl::OkStatus();
  }

  absl::Status ReadTcp(const At& at, ProbeDef& p) {
    ASSIGN_OR_RETURN(Fields f, Fields::Read(at, {"host", "port"}));
    if (const At* host = f.Get("host")) {
      ASSIGN_OR_RETURN(p.host, ReadTemplate(*host));
      if (p.host->IsLiteral() && p.host->source.empty()) return host->Error("the host is empty");
    }
    ASSIGN_OR_RETURN(const At* port, f.Require("port"));
    ASSIGN_OR_RETURN(p.port, ReadTemplate(*port));
    if (p.port.IsLiteral()) {
      int v = 0;
      if (!absl::SimpleAtoi(p.port.source, &v) || v < 1 || v > 65535) {
        return port->Error(
            absl::StrCat("expected a TCP port from 1 to 65535 (or a template such "
                         "as {{config.port}}), got '",
                         p.port.source, "'"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadHttp(const At& at, ProbeDef& p) {
    const At* url = &at;
    std::optional<Fields> f;
    if (!at.node.IsScalar()) {
      ASSIGN_OR_RETURN(f, Fields::Read(at, {"url"}));
      ASSIGN_OR_RETURN(url, f->Require("url"));
    }
    ASSIGN_OR_RETURN(p.url, ReadTemplate(*url));
    const std::string& s = p.url.source;
    if (s.rfind("http://", 0) != 0 && s.rfind("https://", 0) != 0) {
      return url->Error(absl::StrCat("expected an http:// or https:// URL, got '", s, "'"));
    }
    return absl::OkStatus();
  }

  // Zero is a delay too: 0 (seconds) or 0s.
  absl::StatusOr<absl::Duration> ReadDelay(const At& at) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    if (text == "0" || text == "0s") return absl::ZeroDuration();
    return ReadDuration(at);
  }

  absl::StatusOr<Template> ReadTemplate(const At& at) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    auto parsed = ParseTemplate(text, absl::StrCat(def_.file, ":", at.line));
    if (!parsed.ok()) return at.Error(parsed.status().message());
    for (const Template::Part& part : parsed->parts) {
      if (part.kind == Template::Part::Kind::kEvent) {
        return at.Error(absl::StrCat("'", ReferenceText(part),
                                     "': a probe runs outside any event; it may refer to config "
                                     "and facts only"));
      }
      if (part.kind == Template::Part::Kind::kConfig && def_.FindConfig(part.text) == nullptr) {
        return at.Error(absl::StrCat(
            "'", ReferenceText(part), "' names config option '", part.text,
            "', which this service does not declare (options: ", NamesOf(def_.config), ")"));
      }
    }
    return std::move(*parsed);
  }

  ServiceDefinition& def_;
};

}  // namespace

absl::Status ReadHealth(const At& at, ServiceDefinition& def) { return HealthReader(def).Read(at); }

}  // namespace parley::services::definition_internal

#include "services/backends/http/http_action.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "services/backends/common/http_client.h"
#include "services/backends/common/json.h"

namespace parley::services {
namespace {

// Bytes of a response body quoted in an error.
constexpr size_t kBodyQuote = 256;

std::string Quote(absl::string_view body) {
  if (body.empty()) return "(empty)";
  std::string q = absl::CHexEscape(body.substr(0, kBodyQuote));
  if (body.size() > kBodyQuote) absl::StrAppend(&q, "... (", body.size(), " bytes)");
  return q;
}

class HttpRunner : public engine::Action {
 public:
  HttpRunner(HttpAction action, std::string file, absl::Duration timeout,
             std::map<std::string, std::string> defaults, const HttpOptions& options,
             BackendLog log)
      : action_(std::move(action)),
        file_(std::move(file)),
        timeout_(timeout),
        defaults_(std::move(defaults)),
        options_(options),
        log_(std::move(log)) {}

  absl::Status Run(engine::RunContext& ctx) override {
    absl::Status s = Call(ctx);
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat("handler '", ctx.handler(), "': ", s.message()));
  }

 private:
  absl::Status Call(engine::RunContext& ctx) {
    HttpRequest request;
    request.method = action_.method;
    ASSIGN_OR_RETURN(request.url, ExpandTemplate(action_.url, ctx, defaults_));
    if (!absl::StartsWith(request.url, "http://") && !absl::StartsWith(request.url, "https://")) {
      return absl::InvalidArgumentError(absl::StrCat(action_.url.origin, ": '", action_.url.source,
                                                     "' expanded to '", request.url,
                                                     "', which is not an http:// or https:// URL"));
    }
    if (action_.body) {
      ASSIGN_OR_RETURN(request.body, ExpandTemplate(*action_.body, ctx, defaults_));
    }
    for (const auto& [name, t] : action_.headers) {
      ASSIGN_OR_RETURN(std::string value, ExpandTemplate(t, ctx, defaults_));
      request.headers.emplace_back(name, std::move(value));
    }
    request.timeout = timeout_;
    request.max_response_bytes = options_.response_limit;

    ASSIGN_OR_RETURN(HttpResponse response, SendHttpRequest(request));
    if (log_) {
      log_(ctx.unit(), ctx.handler(), "http",
                   absl::StrCat(request.method, " ", request.url, ": ", response.status));
    }
    if (!Expected(response.status)) {
      return absl::FailedPreconditionError(
          absl::StrCat(request.method, " ", request.url, ": status ", response.status,
                       ", expected ", ExpectedText(), "; body: ", Quote(response.body)));
    }

    // Every fact is computed before any is set, so a failing one leaves the run untouched (it
    // rolls back anyway; this keeps the error the first problem).
    std::vector<std::pair<std::string, std::string>> values;
    std::optional<absl::StatusOr<google::protobuf::Value>> json;
    for (const ResponseFact& f : action_.facts) {
      auto value = FactValue(f, response, json);
      if (!value.ok()) {
        return absl::Status(
            value.status().code(),
            absl::StrCat("fact '", f.fact, "' (", file_, ":", f.line, ") from the response to ",
                         request.method, " ", request.url, ": ", value.status().message()));
      }
      values.emplace_back(f.fact, std::move(*value));
    }
    for (const auto& [fact, value] : values) RETURN_IF_ERROR(ctx.Set(fact, value));
    return absl::OkStatus();
  }

  static absl::StatusOr<std::string> FactValue(
      const ResponseFact& f, const HttpResponse& response,
      std::optional<absl::StatusOr<google::protobuf::Value>>& json) {
    switch (f.source) {
      case ResponseFact::Source::kStatus:
        return absl::StrCat(response.status);
      case ResponseFact::Source::kBody:
        return response.body;
      case ResponseFact::Source::kHeader: {
        std::optional<std::string> v = response.Header(f.arg);
        if (!v) return absl::NotFoundError(absl::StrCat("no header '", f.arg, "'"));
        return *v;
      }
      case ResponseFact::Source::kJson: {
        if (!json) json = ParseJson(response.body);
        if (!json->ok()) {
          return absl::InvalidArgumentError(absl::StrCat("the body is ", json->status().message(),
                                                         "; body: ", Quote(response.body)));
        }
        ASSIGN_OR_RETURN(const google::protobuf::Value* v, ResolveJsonPointer(**json, f.arg));
        return JsonValueText(*v);
      }
    }
    return absl::InternalError("unknown response source");
  }

  bool Expected(int status) const {
    if (action_.expect.empty()) return status >= 200 && status <= 299;
    return std::find(action_.expect.begin(), action_.expect.end(), status) != action_.expect.end();
  }

  std::string ExpectedText() const {
    if (action_.expect.empty()) return "2xx";
    if (action_.expect.size() == 1) return absl::StrCat(action_.expect[0]);
    return absl::StrCat("one of ", absl::StrJoin(action_.expect, ", "));
  }

  const HttpAction action_;
  const std::string file_;
  const absl::Duration timeout_;
  const std::map<std::string, std::string> defaults_;
  const HttpOptions options_;
  const BackendLog log_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<engine::Action>> MakeHttpAction(const ServiceDefinition& def,
                                                               const HandlerDef& handler,
                                                               const HttpOptions& options,
                                                               BackendLog log) {
  const auto* http = std::get_if<HttpAction>(&handler.action.detail);
  if (http == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("handler '", handler.name, "': not an http action"));
  }
  return std::make_unique<HttpRunner>(*http, def.file, handler.timeout, ConfigDefaults(def),
                                      options, std::move(log));
}

}  // namespace parley::services

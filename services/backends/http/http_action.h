#pragma once

// The `http` action kind: one request to an HTTP API (a PaaS or SaaS endpoint, a webhook, a
// service's admin API), so that a handler can call an API where another would run a script.
//
// For each run: the URL, the body and the header values are expanded (ExpandTemplate) and the
// request is made with SendHttpRequest, bounded by the handler's timeout and by
// HttpOptions::response_limit bytes of response body. The handler fails (and its run rolls
// back) when the request cannot be made, times out, or answers with a status not in `expect`
// (default: any 2xx); the error names the handler, the method, the URL, the status and the start
// of the body. Otherwise each of `facts` is set in the run from the response: the status, the
// body, a header, or the value a JSON pointer designates in the body (strings as they are, other
// values as JSON). A fact that cannot be had (a missing header, a body that is not JSON, a
// pointer to nothing) fails the handler too, naming the fact and where it was declared.

#include <memory>

#include "absl/status/statusor.h"
#include "engine/spec.h"
#include "services/definition/service.h"
#include "services/backends/common/backend_log.h"

namespace parley::services {

struct HttpOptions {
  // Bytes of response body accepted; a larger body fails the handler.
  size_t response_limit = 1 << 20;
};

// Makes the action of `handler`, whose action must be of kind http. The action keeps copies of
// what it needs from `def`, `handler` and `options`. Requests and answers go to `log` ("http").
absl::StatusOr<std::unique_ptr<engine::Action>> MakeHttpAction(const ServiceDefinition& def,
                                                               const HandlerDef& handler,
                                                               const HttpOptions& options,
                                                               BackendLog log);

}  // namespace parley::services

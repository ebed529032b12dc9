#pragma once

// A small blocking HTTP/1.1 client over libcurl, for backends that call an HTTP API: a PaaS or
// SaaS endpoint (the `http` action kind) or a container engine on a unix socket (the `container`
// kind).
//
// One call makes one request: no redirects are followed, no cookies kept, no connection reused
// across calls, only http:// and https:// URLs are accepted. The response body is bounded; a
// larger one fails the call rather than being truncated. Errors are absl::Status values whose
// message starts with "<METHOD> <url>: "; a response with any status (404, 500, ...) is a
// successful call, the caller judges the status.
//
// Thread-safe: SendHttpRequest may be called from any thread at once (libcurl's global state is
// initialized once, under a lock, on first use).

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace parley::services {

struct HttpRequest {
  // Sent as written: GET, HEAD, POST, PUT, PATCH, DELETE, ...
  std::string method = "GET";
  std::string url;
  // In order; a header given twice is sent twice.
  std::vector<std::pair<std::string, std::string>> headers;
  // Sent when set (even empty: "Content-Length: 0"). Never sent with HEAD.
  std::optional<std::string> body;
  // For the whole call: connecting, sending and receiving.
  absl::Duration timeout = absl::Seconds(30);
  // When not empty, the connection is made to this unix socket instead of the URL's host (whose
  // name is still sent as the Host header), as Docker's and Podman's APIs are served.
  std::string unix_socket;
  // Bytes of response body accepted; more fails the call with RESOURCE_EXHAUSTED.
  size_t max_response_bytes = 1 << 20;
};

struct HttpResponse {
  int status = 0;
  // Headers of the final response, in order, names as the server wrote them.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  // The value of header `name` (case-insensitive); several are joined with ", " (RFC 9110).
  std::optional<std::string> Header(absl::string_view name) const;
};

// Makes `request`. Errors: INVALID_ARGUMENT for a URL or method libcurl refuses,
// DEADLINE_EXCEEDED when the timeout elapses, RESOURCE_EXHAUSTED when the body exceeds its bound,
// UNAVAILABLE when the server cannot be reached or the connection fails, INTERNAL otherwise.
absl::StatusOr<HttpResponse> SendHttpRequest(const HttpRequest& request);

}  // namespace parley::services

#include "services/backends/common/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace parley::services {
namespace {

// curl_global_init is not thread-safe and must run once before any other libcurl call; a function
// static is initialized exactly once even when several threads get here together.
CURLcode GlobalInit() {
  static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  return code;
}

struct EasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

// What the callbacks fill in while a request runs.
struct Transfer {
  size_t limit = 0;
  bool too_large = false;
  HttpResponse response;
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (t->response.body.size() + bytes > t->limit) {
    t->too_large = true;
    return 0;  // makes libcurl stop with CURLE_WRITE_ERROR
  }
  t->response.body.append(data, bytes);
  return bytes;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  absl::string_view line(data, bytes);
  auto& headers = t->response.headers;
  if (absl::StartsWith(line, "HTTP/")) {
    headers.clear();  // a new response (after "100 Continue"): only the final one's are kept
  } else if (!line.empty() && (line[0] == ' ' || line[0] == '\t') && !headers.empty()) {
    // An obsolete folded line continues the previous header.
    absl::StrAppend(&headers.back().second, " ", absl::StripAsciiWhitespace(line));
  } else if (const size_t colon = line.find(':'); colon != absl::string_view::npos) {
    headers.emplace_back(std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
                         std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  return bytes;
}

bool HasLineBreak(absl::string_view s) {
  return s.find_first_of("\r\n") != absl::string_view::npos;
}

}  // namespace

std::optional<std::string> HttpResponse::Header(absl::string_view name) const {
  std::vector<absl::string_view> values;
  for (const auto& [k, v] : headers) {
    if (absl::EqualsIgnoreCase(k, name)) values.push_back(v);
  }
  if (values.empty()) return std::nullopt;
  return absl::StrJoin(values, ", ");
}

absl::StatusOr<HttpResponse> SendHttpRequest(const HttpRequest& request) {
  const std::string what = absl::StrCat(request.method, " ", request.url);
  auto error = [&](absl::StatusCode code, absl::string_view why) {
    return absl::Status(code, absl::StrCat(what, ": ", why));
  };
  if (request.method.empty() || HasLineBreak(request.method) ||
      request.method.find(' ') != std::string::npos) {
    return error(absl::StatusCode::kInvalidArgument, "invalid method");
  }
  for (const auto& [name, value] : request.headers) {
    if (name.empty() || HasLineBreak(name) || HasLineBreak(value) ||
        name.find(':') != std::string::npos) {
      return error(absl::StatusCode::kInvalidArgument,
                   absl::StrCat("invalid header '", absl::CHexEscape(name),
                                "' (names are not empty, and neither holds ':' in a name nor a "
                                "line break)"));
    }
  }
  if (request.timeout <= absl::ZeroDuration()) {
    return error(absl::StatusCode::kDeadlineExceeded, "no time left for the request");
  }
  if (CURLcode code = GlobalInit(); code != CURLE_OK) {
    return error(absl::StatusCode::kInternal,
                 absl::StrCat("cannot initialize libcurl: ", curl_easy_strerror(code)));
  }
  std::unique_ptr<CURL, EasyDeleter> curl(curl_easy_init());
  if (curl == nullptr) return error(absl::StatusCode::kInternal, "curl_easy_init failed");
  CURL* c = curl.get();

  Transfer transfer;
  transfer.limit = request.max_response_bytes;
  char error_buffer[CURL_ERROR_SIZE] = {0};
  std::unique_ptr<curl_slist, SlistDeleter> header_list;
  auto add_header = [&](const std::string& line) {
    curl_slist* l = curl_slist_append(header_list.get(), line.c_str());
    if (l != nullptr) {
      header_list.release();
      header_list.reset(l);
    }
    return l != nullptr;
  };
  bool has_content_type = false;
  for (const auto& [name, value] : request.headers) {
    has_content_type |= absl::EqualsIgnoreCase(name, "Content-Type");
    // "Name;" is libcurl's way to send a header with an empty value.
    if (!add_header(value.empty() ? absl::StrCat(name, ";") : absl::StrCat(name, ": ", value))) {
      return error(absl::StatusCode::kInternal, "out of memory");
    }
  }
  // No "Expect: 100-continue" round trip, and no form content type libcurl would otherwise add
  // to a body the caller did not describe.
  if (!add_header("Expect:")) return error(absl::StatusCode::kInternal, "out of memory");
  const bool send_body = request.body.has_value() && request.method != "HEAD";
  if (send_body && !has_content_type && !add_header("Content-Type:")) {
    return error(absl::StatusCode::kInternal, "out of memory");
  }

  const int64_t timeout_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(request.timeout));
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
  curl_easy_setopt(
      c, CURLOPT_MAXFILESIZE_LARGE,
      static_cast<curl_off_t>(std::min<size_t>(request.max_response_bytes, INT64_MAX)));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, header_list.get());
  if (!request.unix_socket.empty()) {
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, request.unix_socket.c_str());
  }
  if (request.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else {
    if (send_body) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request.body->size()));
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, request.body->data());
    }
    if (request.method != "GET" || send_body) {
      curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    }
  }

  const CURLcode code = curl_easy_perform(c);
  if (code != CURLE_OK) {
    std::string why = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(code);
    if (code == CURLE_COULDNT_CONNECT && !request.unix_socket.empty()) {
      // libcurl's text names the URL's host and port, which were not used.
      long os_errno = 0;
      curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
      why = absl::StrCat(
          "cannot connect to unix socket ", request.unix_socket,
          os_errno != 0 ? absl::StrCat(": ", strerror(static_cast<int>(os_errno))) : "");
    }
    switch (code) {
      case CURLE_WRITE_ERROR:
      case CURLE_FILESIZE_EXCEEDED:
        if (transfer.too_large || code == CURLE_FILESIZE_EXCEEDED) {
          return error(absl::StatusCode::kResourceExhausted,
                       absl::StrCat("the response body is larger than the limit of ",
                                    request.max_response_bytes, " bytes"));
        }
        return error(absl::StatusCode::kInternal, why);
      case CURLE_OPERATION_TIMEDOUT:
        return error(absl::StatusCode::kDeadlineExceeded,
                     absl::StrCat("timed out after ", absl::FormatDuration(request.timeout), " (",
                                  why, ")"));
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        return error(absl::StatusCode::kInvalidArgument, why);
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_CONNECT:
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_PARTIAL_FILE:
        return error(absl::StatusCode::kUnavailable, why);
      default:
        return error(absl::StatusCode::kInternal, why);
    }
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  transfer.response.status = static_cast<int>(status);
  return std::move(transfer.response);
}

}  // namespace parley::services

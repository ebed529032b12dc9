// The `http` action kind (services/backends/http/http_action.h) and the client under it
// (services/backends/common/http_client.h), against a real HTTP server: a python3 http.server the
// test writes and starts on 127.0.0.1, port 0. The server records every request; tests assert on
// what it received and on the facts the run set, and that failures (unexpected status, timeout,
// non-JSON body, oversized body, unreachable server) name what failed and leave the run rolled
// back.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "services/backends/backends.h"
#include "services/backends/common/http_client.h"
#include "services/backends/common/json.h"
#include "tests/services/backends/backend_test_util.h"
#include "tests/testing/child_process.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kServer[] = R"py(import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = []

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json", extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def serve(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        if self.path == "/_log":
            return self.reply(200, json.dumps(log))
        log.append({"method": self.command, "path": self.path, "body": body,
                    "headers": {k.lower(): v for k, v in self.headers.items()}})
        path = self.path.split("?")[0]
        if path == "/items" and self.command == "POST":
            item = {"id": 42, "name": json.loads(body)["name"], "tags": ["a", "b"],
                    "meta": {"a/b": "slash", "n": 1.5, "ok": True, "none": None}}
            self.reply(201, json.dumps(item), extra=[("X-Request-Id", "req-7"),
                                                    ("X-Multi", "one"), ("X-Multi", "two")])
        elif path.startswith("/status/"):
            self.reply(int(path[len("/status/"):]), "short and stout", "text/plain")
        elif path == "/slow":
            time.sleep(30)
            self.reply(200, "{}")
        elif path == "/text":
            self.reply(200, "plain text, not JSON", "text/plain")
        elif path == "/big":
            self.reply(200, "x" * 100000, "text/plain")
        elif path == "/json":
            self.reply(200, json.dumps({"id": 7, "list": [1, 2]}))
        else:
            self.reply(404, json.dumps({"error": "no route " + path}))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = serve

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
)py";

constexpr char kRest[] = "required: {host: string, port: int}\n";

constexpr char kService[] = R"(name: api-client
requires:
  api: rest
config:
  token: {type: string, default: s3cret}
  name: {type: string, default: widget}
events:
  create: Creates an item.
  teapot: Gets an unexpected status.
  delete: Deletes, where 404 is fine.
  slow: Calls a server that does not answer in time.
  text: Reads a JSON fact from a text body.
  missing: Reads a JSON fact that is not there.
  big: Gets a body larger than the limit.
  nowhere: Calls a port nothing listens on.
handlers:
  - name: create
    on: [create]
    action:
      kind: http
      method: POST
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/items?unit=web"
      body: '{"name": "{{config.name}}"}'
      headers:
        Authorization: "Bearer {{config.token}}"
        Content-Type: application/json
      expect: [201]
      facts:
        item.id: json:/id
        item.tag: json:/tags/1
        item.slash: json:/meta/a~1b
        item.number: json:/meta/n
        item.ok: json:/meta/ok
        item.none: json:/meta/none
        item.meta: json:/meta
        item.request: header:x-request-id
        item.multi: header:X-Multi
        item.status: status
        item.body: body
  - name: teapot
    on: [teapot]
    action:
      kind: http
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/status/418"
      facts: {teapot.status: status}
  - name: delete
    on: [delete]
    action:
      kind: http
      method: DELETE
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/status/404"
      expect: [204, 404]
      facts: {deleted.status: status}
  - name: slow
    on: [slow]
    timeout: 1s
    action:
      kind: http
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/slow"
  - name: text
    on: [text]
    action:
      kind: http
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/text"
      facts: {text.status: status, text.id: json:/id}
  - name: missing
    on: [missing]
    action:
      kind: http
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/json"
      facts: {json.id: json:/id, json.third: json:/list/2}
  - name: big
    on: [big]
    action:
      kind: http
      url: "http://{{fact.api.remote.host}}:{{fact.api.remote.port}}/big"
      facts: {big.body: body}
  - name: nowhere
    on: [nowhere]
    action:
      kind: http
      url: "http://127.0.0.1:1/"
)";

// The line (from 1) of the first line of `text` that contains `what`.
int LineOf(absl::string_view text, absl::string_view what) {
  const size_t at = text.find(what);
  return at == absl::string_view::npos ? 0 : 1 + std::count(text.begin(), text.begin() + at, '\n');
}

HttpRequest Get(std::string url, std::string method = "GET") {
  HttpRequest r;
  r.method = std::move(method);
  r.url = std::move(url);
  return r;
}

using testing::Joined;
using testing::Named;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write("server.py", kServer);
    server_ = std::make_unique<::parley::testing::ChildProcess>(
        std::vector<std::string>{"python3", dir_.Sub("server.py"), dir_.Sub("port")},
        dir_.Sub("server.log"));
    ASSERT_TRUE(::parley::testing::WaitFor(
        [&] { return std::filesystem::exists(dir_.Sub("port")) || !server_->Running(); },
        absl::Seconds(20)))
        << "the server did not start";
    std::ifstream f(dir_.Sub("port"));
    ASSERT_TRUE(f >> port_) << "the server did not start: " << Read("server.log");
    base_ = absl::StrCat("http://127.0.0.1:", port_);
  }

  void Write(const std::string& rel, const std::string& text) {
    const std::string path = dir_.Sub(rel);
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << text;
  }

  std::string Read(const std::string& rel) {
    std::ifstream f(dir_.Sub(rel));
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

  // The requests the server received, oldest first.
  google::protobuf::Value Received() {
    auto r = SendHttpRequest(Get(base_ + "/_log"));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    auto v = ParseJson(r->body);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : google::protobuf::Value{};
  }

  static std::string At(const google::protobuf::Value& doc, absl::string_view pointer) {
    auto v = ResolveJsonPointer(doc, pointer);
    return v.ok() ? JsonValueText(**v) : absl::StrCat("<", v.status().message(), ">");
  }

  ::parley::testing::TempDir dir_;
  std::unique_ptr<::parley::testing::ChildProcess> server_;
  int port_ = 0;
  std::string base_;
};

// ---------------------------------------------------------------------------------------------
// The client.

TEST_F(HttpServerTest, ClientSendsMethodHeadersAndBody) {
  HttpRequest req;
  req.method = "PUT";
  req.url = base_ + "/status/200";
  req.headers = {{"X-One", "1"}, {"X-Empty", ""}};
  req.body = "payload";
  auto r = SendHttpRequest(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "short and stout");
  EXPECT_EQ(r->Header("content-type"), "text/plain");
  EXPECT_EQ(r->Header("X-Absent"), std::nullopt);

  r = SendHttpRequest(Get(base_ + "/status/204", "HEAD"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->body, "");

  const google::protobuf::Value log = Received();
  EXPECT_EQ(At(log, "/0/method"), "PUT");
  EXPECT_EQ(At(log, "/0/path"), "/status/200");
  EXPECT_EQ(At(log, "/0/body"), "payload");
  EXPECT_EQ(At(log, "/0/headers/x-one"), "1");
  EXPECT_EQ(At(log, "/0/headers/x-empty"), "");
  // No content type is made up for a body the caller did not describe.
  EXPECT_THAT(At(log, "/0/headers/content-type"), StartsWith("<"));
  EXPECT_EQ(At(log, "/1/method"), "HEAD");
}

TEST_F(HttpServerTest, ClientErrorsNameTheUrl) {
  HttpRequest bad = Get(base_ + "/x");
  bad.headers = {{"X-Bad", "a\r\nInjected: yes"}};
  auto r = SendHttpRequest(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              StartsWith(absl::StrCat("GET ", base_, "/x: invalid header")));

  r = SendHttpRequest(Get("ftp://127.0.0.1/file"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), StartsWith("GET ftp://127.0.0.1/file: "));

  HttpRequest small = Get(base_ + "/big");
  small.max_response_bytes = 1000;
  r = SendHttpRequest(small);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();

  HttpRequest unix = Get("http://localhost/_ping");
  unix.unix_socket = dir_.Sub("no.sock");
  r = SendHttpRequest(unix);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(r.status().message(), absl::StrCat("GET http://localhost/_ping: cannot connect to unix "
                                               "socket ",
                                               dir_.Sub("no.sock"), ": No such file or directory"));
}

// ---------------------------------------------------------------------------------------------
// The action kind, through a real engine and KB.

class HttpActionTest : public HttpServerTest {
 protected:
  void SetUp() override {
    HttpServerTest::SetUp();
    if (HasFatalFailure()) return;
    Write("shared/rest.yaml", kRest);
    Write("svc/service.yaml", kService);
    auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
    ASSERT_TRUE(def.ok()) << def.status();
    BackendOptions options;
    options.http.response_limit = 64 * 1024;
    options.log = [this](absl::string_view, absl::string_view handler, absl::string_view source,
                         absl::string_view text) {
      logs_.push_back(absl::StrCat(handler, "|", source, "|", text));
    };
    std::unique_ptr<BackendRegistry> backends = MakeBackends(options);
    BackendRegistry& factory = *backends;
    auto spec = BuildSpec(*def, "web/0", factory);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto store = kb::Store::Open(dir_.Sub("kb"), kb::StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "web/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
    auto engine = engine::Engine::Create(std::move(*spec), kb_.get(), &clock_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    // The API's address arrives as relation data, as a provider's would.
    ASSERT_EQ(Run(Joined("api", "api:1", "saas/0",
                         {{"host", "127.0.0.1"}, {"port", absl::StrCat(port_)}}))
                  .outcome,
              engine::RunOutcome::kCommitted)
        << FailureMessage();
  }

  engine::RunResult Run(v1::Event e) {
    auto id = engine_->Enqueue(std::move(e));
    EXPECT_TRUE(id.ok()) << id.status();
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : engine::RunResult{};
  }

  std::string FailureMessage() const {
    return engine_->failure() ? engine_->failure()->message() : "(no failure)";
  }

  // Runs `event`, which must fail; returns the failure's message.
  std::string Fails(const std::string& event) {
    engine::RunResult r = Run(Named(event));
    EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed) << event;
    return FailureMessage();
  }

  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
  std::vector<std::string> logs_;
};

TEST_F(HttpActionTest, RequestIsExpandedAndFactsComeFromTheResponse) {
  ASSERT_EQ(Run(Named("create")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();

  const google::protobuf::Value log = Received();
  EXPECT_EQ(At(log, "/0/method"), "POST");
  EXPECT_EQ(At(log, "/0/path"), "/items?unit=web");
  EXPECT_EQ(At(log, "/0/body"), R"({"name": "widget"})");
  EXPECT_EQ(At(log, "/0/headers/authorization"), "Bearer s3cret");
  EXPECT_EQ(At(log, "/0/headers/content-type"), "application/json");

  EXPECT_EQ(engine_->FactValue("item.id"), "42");
  EXPECT_EQ(engine_->FactValue("item.tag"), "b");
  EXPECT_EQ(engine_->FactValue("item.slash"), "slash");
  EXPECT_EQ(engine_->FactValue("item.number"), "1.5");
  EXPECT_EQ(engine_->FactValue("item.ok"), "true");
  EXPECT_EQ(engine_->FactValue("item.none"), "null");
  EXPECT_EQ(engine_->FactValue("item.meta"), R"({"a/b":"slash","n":1.5,"none":null,"ok":true})");
  EXPECT_EQ(engine_->FactValue("item.request"), "req-7");
  EXPECT_EQ(engine_->FactValue("item.multi"), "one, two");
  EXPECT_EQ(engine_->FactValue("item.status"), "201");
  EXPECT_THAT(engine_->FactValue("item.body").value_or(""), StartsWith(R"({"id": 42, )"));
  EXPECT_THAT(
      logs_, ::testing::Contains(absl::StrCat("create|http|POST ", base_, "/items?unit=web: 201")));
}

TEST_F(HttpActionTest, ExpectListsTheStatusesThatSucceed) {
  ASSERT_EQ(Run(Named("delete")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("deleted.status"), "404");
  EXPECT_EQ(At(Received(), "/0/method"), "DELETE");
}

TEST_F(HttpActionTest, AnUnexpectedStatusFailsTheHandler) {
  EXPECT_EQ(Fails("teapot"), absl::StrCat("handler 'teapot': GET ", base_,
                                          "/status/418: status 418, expected 2xx; body: short "
                                          "and stout"));
  EXPECT_FALSE(engine_->IsSet("teapot.status"));
}

TEST_F(HttpActionTest, TheHandlerTimeoutBoundsTheRequest) {
  const absl::Time start = absl::Now();
  EXPECT_THAT(Fails("slow"),
              StartsWith(absl::StrCat("handler 'slow': GET ", base_, "/slow: timed out after 1s")));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Seconds(1));
  EXPECT_LT(took, absl::Seconds(5));
}

TEST_F(HttpActionTest, AJsonFactFromATextBodyFails) {
  EXPECT_THAT(Fails("text"),
              AllOf(StartsWith("handler 'text': fact 'text.id' ("),
                    HasSubstr(absl::StrCat("service.yaml:", LineOf(kService, "text.id: json:/id"),
                                           ") from the response to GET ", base_,
                                           "/text: the body is not valid JSON")),
                    HasSubstr("body: plain text, not JSON")));
  EXPECT_FALSE(engine_->IsSet("text.status"));  // set by nothing: the run rolled back
}

TEST_F(HttpActionTest, AJsonPointerToNothingFails) {
  EXPECT_THAT(Fails("missing"), StartsWith("handler 'missing': fact 'json.third' ("));
  EXPECT_THAT(FailureMessage(), HasSubstr("JSON pointer '/list/2': '/list' is an array of 2 "
                                          "items, with no item '2'"));
  EXPECT_FALSE(engine_->IsSet("json.id"));
}

TEST_F(HttpActionTest, ABodyOverTheLimitFails) {
  EXPECT_EQ(Fails("big"), absl::StrCat("handler 'big': GET ", base_,
                                       "/big: the response body is larger than the limit of "
                                       "65536 bytes"));
  EXPECT_FALSE(engine_->IsSet("big.body"));
}

TEST_F(HttpActionTest, AnUnreachableServerFails) {
  EXPECT_THAT(Fails("nowhere"), StartsWith("handler 'nowhere': GET http://127.0.0.1:1/: "));
}

}  // namespace
}  // namespace parley::services

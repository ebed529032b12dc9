// parley-hook: what a program run by an `exec` action, or a task of an `ansible` playbook, uses
// to act on its run (facts, relation data, status, events, timers, action output). It sends its
// arguments to the agent over the unix socket named by PARLEY_HOOK_SOCKET
// (services/backends/process/hook_protocol.h describes the protocol) and prints the reply. Changes
// land only if the run commits.
//
// Exit status: 0 done, 1 refused by the agent (the reason on stderr), 2 not inside a run,
// 64 usage error.

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

constexpr int kRefused = 1;
constexpr int kNotInRun = 2;
constexpr int kUsage = 64;

constexpr char kUsageText[] =
    "usage: parley-hook COMMAND ...\n"
    "  fact set NAME [VALUE] | fact clear NAME | fact get NAME\n"
    "  leader get [unit|term]\n"
    "  relation get ENDPOINT|RELATION_ID [UNIT] [KEY]\n"
    "  relation set ENDPOINT|RELATION_ID KEY VALUE\n"
    "  relation unset ENDPOINT|RELATION_ID KEY\n"
    "  relation list [ENDPOINT]\n"
    "  config get [KEY]\n"
    "  status set STATE MESSAGE\n"
    "  log MESSAGE\n"
    "  event fire NAME\n"
    "  timer set NAME SECONDS\n"
    "  retry-later DURATION\n"
    "  action output KEY VALUE\n";

int NotInRun(const char* why) {
  if (why[0] == '\0') {
    fputs("parley-hook: not inside a run\n", stderr);
  } else {
    fprintf(stderr, "parley-hook: not inside a run (%s)\n", why);
  }
  return kNotInRun;
}

// Argument counts each command accepts (including the two command words, or one for `log`).
bool ValidShape(const std::vector<std::string>& a) {
  if (a.empty()) return false;
  const std::string verb = a.size() >= 2 ? a[0] + " " + a[1] : a[0];
  const size_t n = a.size();
  if (verb == "fact set") return n == 3 || n == 4;
  if (verb == "fact clear" || verb == "fact get" || verb == "event fire") return n == 3;
  if (verb == "relation get") return n >= 3 && n <= 5;
  if (verb == "relation set") return n == 5;
  if (verb == "relation unset") return n == 4;
  if (verb == "relation list" || verb == "config get" || verb == "leader get") {
    return n == 2 || n == 3;
  }
  if (verb == "status set" || verb == "timer set" || verb == "action output") return n == 4;
  if (a[0] == "log" || a[0] == "retry-later") return n == 2;
  return false;
}

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "-h" || args[0] == "--help")) {
    fputs(kUsageText, stdout);
    return 0;
  }
  if (!ValidShape(args)) {
    fputs(kUsageText, stderr);
    return kUsage;
  }
  const char* path = getenv("PARLEY_HOOK_SOCKET");
  if (path == nullptr || path[0] == '\0') return NotInRun("");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(addr.sun_path)) return NotInRun("PARLEY_HOOK_SOCKET is too long");
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fprintf(stderr, "parley-hook: socket: %s\n", strerror(errno));
    return kRefused;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    // The socket is removed when the run ends: a tool called after it (or by a process the
    // program left behind) lands here.
    return NotInRun(strerror(errno));
  }
  std::string request;
  for (const std::string& a : args) request += std::to_string(a.size()) + ":" + a + ",";
  if (!WriteAll(fd, request) || shutdown(fd, SHUT_WR) != 0) {
    return NotInRun(strerror(errno));
  }
  std::string reply;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return NotInRun(strerror(errno));
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  if (reply.empty()) return NotInRun("the run ended before it answered");
  const std::string text = reply.substr(1);
  if (reply[0] == '0') {
    fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  fprintf(stderr, "parley-hook: %s\n", text.c_str());
  return kRefused;
}

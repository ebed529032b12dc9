#include "tools/cli/deploy/container_runtime.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

extern char** environ;

namespace parley::cli {
namespace {

// FNV-1a: a name that stays the same from one build (and one machine) to the next.
uint32_t StableHash(const std::string& text) {
  uint32_t h = 2166136261u;
  for (unsigned char c : text) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

// "10.213.7.0/24" -> "10.213.7."; empty for anything but an IPv4 /24.
std::string Prefix24(const std::string& subnet) {
  std::vector<std::string> parts = absl::StrSplit(subnet, absl::ByAnyChar("./"));
  if (parts.size() != 5 || parts[3] != "0" || parts[4] != "24") return "";
  return absl::StrCat(parts[0], ".", parts[1], ".", parts[2], ".");
}

}  // namespace

absl::StatusOr<v1::ContainerRuntimeRecord> ContainerRuntime::NewRecord(
    const std::string& engine, const std::string& image, const std::string& model_dir) {
  if (engine != "podman" && engine != "docker") {
    return absl::InvalidArgumentError(
        absl::StrCat("--runtime: expected podman or docker, got '", engine, "'"));
  }
  v1::ContainerRuntimeRecord r;
  r.set_engine(engine);
  r.set_image(image);
  char hex[9];
  std::snprintf(hex, sizeof(hex), "%08x", StableHash(model_dir));
  r.set_prefix(absl::StrCat("parley-", hex));
  r.set_network(r.prefix());
  return r;
}

ContainerRuntime::Result ContainerRuntime::Engine(const std::vector<std::string>& args) const {
  Result result;
  int fds[2];
  if (pipe(fds) != 0) return result;
  std::vector<std::string> argv_s = {record_.engine()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    result.output = absl::StrCat("cannot run ", record_.engine(), ": ", strerror(rc));
    return result;
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) result.output.append(buf, n);
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

absl::Status ContainerRuntime::EngineOk(const std::vector<std::string>& args) const {
  Result r = Engine(args);
  if (r.code == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(record_.engine(), " ", absl::StrJoin(args, " "),
                                          " failed (", r.code,
                                          "): ", absl::StripAsciiWhitespace(r.output)));
}

absl::Status ContainerRuntime::CheckImage() const {
  Result r = Engine({"image", "inspect", "--format", "{{.Id}}", record_.image()});
  if (r.code == 0) return absl::OkStatus();
  if (r.code == -1) {
    return absl::FailedPreconditionError(
        absl::StrCat("--runtime ", record_.engine(), ": ", r.output));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("no image ", record_.image(), " in ", record_.engine(),
                   "; build it from this build's binaries with\n  deploy/build-image.sh --engine ",
                   record_.engine(), " --tag ", record_.image(),
                   " [--local-base] [--extra-packages \"...\"]\nor pass --image (docs/deploy.md)"));
}

absl::Status ContainerRuntime::EnsureNetwork() {
  if (Engine({"network", "inspect", record_.network()}).code == 0) {
    if (!record_.subnet().empty()) return absl::OkStatus();
    // Made by a run that stopped before recording it: the units' addresses are unknown, so
    // start over (no unit can be on it yet).
    RETURN_IF_ERROR(RemoveNetwork());
  }
  std::vector<std::string> candidates;
  if (!record_.subnet().empty()) {
    // The units' recorded addresses are in it.
    candidates.push_back(record_.subnet());
  } else {
    const uint32_t start = StableHash(record_.prefix()) % 250;
    for (uint32_t i = 0; i < 16; ++i) {
      candidates.push_back(absl::StrCat("10.213.", (start + i) % 250 + 1, ".0/24"));
    }
  }
  std::string errors;
  for (const std::string& subnet : candidates) {
    Result r = Engine({"network", "create", "--subnet", subnet, "--label",
                       "parley.model=" + record_.prefix(), record_.network()});
    if (r.code == 0) {
      record_.set_subnet(subnet);
      return absl::OkStatus();
    }
    absl::StrAppend(&errors, "\n  ", subnet, ": ", absl::StripAsciiWhitespace(r.output));
  }
  return absl::InternalError(
      absl::StrCat("cannot create the network ", record_.network(), ":", errors));
}

absl::StatusOr<std::string> ContainerRuntime::AllocateIp(const std::set<std::string>& used) const {
  const std::string prefix = Prefix24(record_.subnet());
  if (prefix.empty()) {
    return absl::InternalError(
        absl::StrCat("the model's network has subnet '", record_.subnet(), "', not a /24"));
  }
  for (int host = 2; host < 255; ++host) {
    const std::string ip = absl::StrCat(prefix, host);
    if (!used.contains(ip)) return ip;
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("no free address left in ", record_.subnet(), " (253 units)"));
}

std::string ContainerRuntime::ContainerName(const std::string& unit) const {
  return absl::StrCat(record_.prefix(), "-", absl::StrReplaceAll(unit, {{"/", "-"}}));
}

absl::Status ContainerRuntime::Run(const UnitContainer& c) const {
  // The container runs as root: the mounted definitions and the key (0600) belong to whoever
  // runs the CLI, and container root is that user (rootless podman) or root (rootful podman,
  // docker). Nothing else runs in the container, and its writes go to its own volume.
  std::vector<std::string> args = {"run",        "--detach",
                                   "--name",     c.container,
                                   "--hostname", c.container,
                                   "--network",  record_.network(),
                                   "--ip",       c.ip,
                                   "--user",     "0:0",
                                   "--label",    "parley.model=" + record_.prefix(),
                                   "--label",    "parley.unit=" + c.unit,
                                   "--volume",   VolumeName(c.container) + ":/var/lib/parley"};
  for (const std::string& m : c.mounts) {
    args.push_back("--volume");
    args.push_back(absl::StrCat(m, ":", m, ":ro"));
  }
  if (!c.tls_dir.empty()) {
    args.push_back("--volume");
    args.push_back(c.tls_dir + ":/etc/parley/tls:ro");
  }
  const std::string address = absl::StrCat(c.ip, ":", kContainerAgentPort);
  args.insert(args.end(),
              {record_.image(), "--data=/var/lib/parley/kb", "--state_dir=/var/lib/parley/units",
               absl::StrCat("--listen=0.0.0.0:", kContainerAgentPort), "--advertise=" + address,
               "--metrics_listen=0.0.0.0:9464", "--unit_host=" + c.ip});
  if (c.tls_dir.empty()) {
    args.push_back("--plaintext");
  } else {
    args.insert(args.end(),
                {"--tls_cert=/etc/parley/tls/cert.pem", "--tls_key=/etc/parley/tls/key.pem",
                 "--tls_ca=/etc/parley/tls/ca.pem"});
  }
  return EngineOk(args);
}

absl::Status ContainerRuntime::Start(const std::string& container) const {
  Result r = Engine({"inspect", "--format", "{{.State.Running}}", container});
  if (r.code != 0) {
    return absl::NotFoundError(absl::StrCat("no container ", container, " in ", record_.engine(),
                                            ": ", absl::StripAsciiWhitespace(r.output)));
  }
  if (absl::StripAsciiWhitespace(r.output) == "true") return absl::OkStatus();
  return EngineOk({"start", container});
}

absl::Status ContainerRuntime::Stop(const std::vector<std::string>& containers, int grace_s) const {
  if (containers.empty()) return absl::OkStatus();
  std::vector<std::string> args = {"stop", "-t", absl::StrCat(grace_s)};
  args.insert(args.end(), containers.begin(), containers.end());
  return EngineOk(args);
}

absl::Status ContainerRuntime::Remove(const std::string& container) const {
  Result r = Engine({"rm", "--force", container});
  if (r.code != 0 && !absl::StrContains(absl::AsciiStrToLower(r.output), "no such")) {
    return absl::InternalError(absl::StrCat(record_.engine(), " rm ", container, ": ",
                                            absl::StripAsciiWhitespace(r.output)));
  }
  r = Engine({"volume", "rm", "--force", VolumeName(container)});
  if (r.code != 0 && !absl::StrContains(absl::AsciiStrToLower(r.output), "no such")) {
    return absl::InternalError(absl::StrCat(record_.engine(), " volume rm ", VolumeName(container),
                                            ": ", absl::StripAsciiWhitespace(r.output)));
  }
  return absl::OkStatus();
}

absl::Status ContainerRuntime::RemoveNetwork() const {
  Result r = Engine({"network", "rm", record_.network()});
  if (r.code != 0 && Engine({"network", "inspect", record_.network()}).code == 0) {
    return absl::InternalError(absl::StrCat(record_.engine(), " network rm ", record_.network(),
                                            ": ", absl::StripAsciiWhitespace(r.output)));
  }
  return absl::OkStatus();
}

std::string ContainerRuntime::LogTail(const std::string& container, int lines) const {
  return Engine({"logs", "--tail", absl::StrCat(lines), container}).output;
}

}  // namespace parley::cli

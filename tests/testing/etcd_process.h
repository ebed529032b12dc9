#pragma once

// A real single-member etcd for tests: its data in a temp dir, on free loopback ports, stopped
// when the object goes. Tests call Start() and fail with its message, which names the Debian
// package when etcd is not installed.

#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testing/child_process.h"
#include "tests/testing/free_port.h"
#include "tests/testing/temp_dir.h"

namespace parley::testing {

// The etcd binary, or "" when neither PATH nor /usr/bin has one.
inline std::string FindEtcd() {
  for (const char* dir : {"/usr/bin", "/usr/local/bin"}) {
    const std::string path = absl::StrCat(dir, "/etcd");
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

class EtcdProcess {
 public:
  EtcdProcess() = default;
  ~EtcdProcess() { Stop(); }
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // Starts the member; "" when it runs (the caller waits for it to answer), else why not.
  std::string Start() {
    const std::string etcd = FindEtcd();
    if (etcd.empty()) return "no etcd binary: install the Debian package etcd-server (tools/setup)";
    client_port_ = PickFreePort();
    const int peer_port = PickFreePort();
    const std::string client = absl::StrCat("http://127.0.0.1:", client_port_);
    const std::string peer = absl::StrCat("http://127.0.0.1:", peer_port);
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{etcd, "--name", "test", "--data-dir", dir_.Sub("data"),
                                 "--listen-client-urls", client, "--advertise-client-urls", client,
                                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                 "--initial-cluster", "test=" + peer, "--initial-cluster-state",
                                 "new", "--log-level", "warn"},
        dir_.Sub("etcd.log"));
    if (process_->pid() <= 0) return "cannot fork etcd";
    return "";
  }

  // "127.0.0.1:port" of its client listener.
  std::string endpoint() const { return absl::StrCat("127.0.0.1:", client_port_); }
  std::string ReadLog() const {
    std::ifstream in(dir_.Sub("etcd.log"));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  bool Running() { return process_ != nullptr && process_->Running(); }
  void Stop() {
    if (process_ != nullptr) process_->Stop(absl::Seconds(2));
  }

 private:
  TempDir dir_;
  std::unique_ptr<ChildProcess> process_;
  int client_port_ = 0;
};

}  // namespace parley::testing

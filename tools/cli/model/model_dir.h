#pragma once

// A model directory: what `parley up` applied (model.json, a v1::ModelState), the parleyd it
// started (its knowledge base, the units' state directories, its log) and a lock that keeps two
// CLI commands from changing the model at once. It records where agents are; it is never in the
// agents' data path.
//
//   <dir>/model.json      the applied model (written atomically after every step)
//   <dir>/lock            flock()ed by commands that change the model
//   <dir>/kb/             parleyd's knowledge base
//   <dir>/units/<unit>/   each unit's state directory (PARLEY_STATE_DIR)
//   <dir>/parleyd.log     parleyd's output
//   <dir>/pki/            the model's CA and certificates (pki.h)

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "parley/v1/model.pb.h"
#include "tools/cli/common/find_binary.h"

namespace parley::cli {

class ModelDir {
 public:
  // `path`: the directory (created by Create).
  explicit ModelDir(std::string path);
  ~ModelDir();

  const std::string& path() const { return path_; }
  // Creates the directory if missing.
  absl::Status Create() const;
  bool Exists() const;

  // Reads model.json; NOT_FOUND when nothing was applied yet.
  absl::StatusOr<v1::ModelState> Load() const;
  // Replaces model.json atomically (write beside, fsync, rename).
  absl::Status Save(const v1::ModelState& state) const;

  // Takes the directory's lock, waiting up to `timeout` for another command to finish.
  absl::Status Lock(absl::Duration timeout);

  // The model's CA and certificates (see pki.h).
  std::string pki_dir() const;
  // With `tls`, talks to parleyd with mutual TLS: makes the model's CA and the CLI's certificate
  // if missing. Without, plaintext.
  absl::Status UseTls(bool tls);
  bool tls() const { return tls_; }
  // What clients of the model's parleyd processes use.
  std::shared_ptr<grpc::ChannelCredentials> credentials() const { return credentials_; }

  // Starts parleyd for this directory (in the background, in a session of its own) unless the one
  // recorded in `host` answers. Fills `host` with where it listens. `parleyd` is the binary.
  // A parleyd that answers at the recorded address and serves this directory's knowledge base is
  // the model's, whoever started it (this CLI, a supervisor such as systemd, an operator by
  // hand with the same command line): `host` then takes its pid.
  // `started` (if given) says whether this call started it.
  absl::Status EnsureHost(const std::string& parleyd, v1::HostRecord& host,
                          bool* started = nullptr) const;
  // Whether `info` (what a parleyd says of itself) is the parleyd of `host`: the recorded pid, or
  // the same data directory.
  static bool Serves(const v1::HostInfo& info, const v1::HostRecord& host);
  // Stops the recorded parleyd (SIGTERM, then SIGKILL after `grace`); OK when it is not running.
  absl::Status StopHost(const v1::HostRecord& host, absl::Duration grace) const;

  // The last `bytes` of parleyd's log, for error messages.
  std::string LogTail(size_t bytes) const;

 private:
  std::string path_;
  int lock_fd_ = -1;
  bool tls_ = false;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
};

}  // namespace parley::cli

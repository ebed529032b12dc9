#pragma once

// The `parley` commands (docs/cli.md), each run with the command line parsed by parley.cc.
//  - commands_apply.cc: what changes the model (up, down, relate, unrelate, config, add-unit,
//    remove-unit, resolve, cert);
//  - commands_observe.cc: what shows it or acts through it (status, wait, run, logs, facts,
//    relation-data, trace, metrics-config, version, export).

#include "absl/status/status.h"
#include "tools/cli/args.h"
#include "tools/cli/session.h"

namespace parley::cli {

absl::Status Up(Session& s, const Args& args);
absl::Status Down(Session& s, const Args& args);
// Brings the model's parleyd (or containers) back as they were, without applying the model file.
absl::Status Start(Session& s, const Args& args);
// `relate` or, with `relate` false, `unrelate`.
absl::Status Relate(Session& s, const Args& args, bool relate);
absl::Status Config(Session& s, const Args& args);
absl::Status AddUnit(Session& s, const Args& args);
absl::Status RemoveUnit(Session& s, const Args& args);
// Retries or skips a unit's failed inbox head; sets `exit_code` when the retry timed out.
absl::Status Resolve(Session& s, const Args& args, int& exit_code);
absl::Status Cert(Session& s, const Args& args);

absl::Status Status(Session& s, const Args& args);
absl::Status Wait(Session& s, const Args& args);
// Sets `exit_code` for a failed action.
absl::Status Run(Session& s, const Args& args, int& exit_code);
absl::Status Logs(Session& s, const Args& args);
absl::Status Facts(Session& s, const Args& args);
absl::Status RelationData(Session& s, const Args& args);
absl::Status Trace(Session& s, const Args& args);
absl::Status MetricsConfig(Session& s, const Args& args);
absl::Status Version(Session& s, const Args& args);
absl::Status Export(const Args& args);

}  // namespace parley::cli

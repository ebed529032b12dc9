#pragma once

// The `parley` commands (docs/cli.md), one file per group:
//  - lifecycle.cc: up, start, down;
//  - change.cc: relate, unrelate, config, add-unit, remove-unit;
//  - act.cc: resolve, run;
//  - observe.cc: status, wait, logs, facts, relation-data, trace, version;
//  - deploy.cc: cert, metrics-config, export, host-unit, probe;
// and table.cc, the one table of their names, arguments, flags and handlers.

#include <vector>

#include "absl/status/status.h"
#include "tools/cli/args.h"
#include "tools/cli/model/session.h"

namespace parley::cli {

// Every command, in the order `parley --help` lists them.
const std::vector<Command>& Commands();

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
// Sets `exit_code` for a failed action.
absl::Status Run(Session& s, const Args& args, int& exit_code);

absl::Status Status(Session& s, const Args& args);
absl::Status Wait(Session& s, const Args& args);
absl::Status Logs(Session& s, const Args& args);
absl::Status Facts(Session& s, const Args& args);
absl::Status RelationData(Session& s, const Args& args);
absl::Status Trace(Session& s, const Args& args);
absl::Status Version(Session& s, const Args& args);

absl::Status Cert(Session& s, const Args& args);
absl::Status MetricsConfig(Session& s, const Args& args);
absl::Status Export(const Args& args);
// `parley host-unit`: parleyd hosting one unit of an exported model, in the foreground; returns
// the exit code.
int HostUnitCommand(const Args& args);
absl::Status ProbeCommand(const Args& args);

}  // namespace parley::cli

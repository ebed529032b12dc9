#include "tools/cli/commands/output.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"

namespace parley::cli {

std::string WorkloadName(v1::WorkloadState s) {
  switch (s) {
    case v1::WORKLOAD_STATE_MAINTENANCE:
      return "maintenance";
    case v1::WORKLOAD_STATE_BLOCKED:
      return "blocked";
    case v1::WORKLOAD_STATE_WAITING:
      return "waiting";
    case v1::WORKLOAD_STATE_ACTIVE:
      return "active";
    case v1::WORKLOAD_STATE_ERROR:
      return "error";
    default:
      return "unknown";
  }
}

std::string AgentStateName(v1::AgentState s) {
  switch (s) {
    case v1::AGENT_STATE_IDLE:
      return "idle";
    case v1::AGENT_STATE_EXECUTING:
      return "executing";
    case v1::AGENT_STATE_ERROR:
      return "error";
    default:
      return "unknown";
  }
}

std::string StageName(v1::UnitStage s) {
  switch (s) {
    case v1::UNIT_STAGE_INSTALLING:
      return "installing";
    case v1::UNIT_STAGE_ACTIVE:
      return "active";
    case v1::UNIT_STAGE_DYING:
      return "dying";
    case v1::UNIT_STAGE_DEAD:
      return "dead";
    default:
      return "unknown";
  }
}

std::string HealthName(const v1::AgentStatus& s) {
  switch (s.health()) {
    case v1::WORKLOAD_HEALTH_HEALTHY:
      return "healthy";
    case v1::WORKLOAD_HEALTH_UNHEALTHY:
      return "unhealthy";
    default:
      return s.probes_size() > 0 ? "checking" : "-";
  }
}

std::string DescribeFailure(const std::string& unit, const v1::RunFailure& failure,
                            size_t max_error) {
  std::string error = failure.message();
  if (max_error > 3 && error.size() > max_error) error = error.substr(0, max_error - 3) + "...";
  return absl::StrCat(
      "event ", failure.event_id(), " ", failure.event_name(), " failed: ", error, " (",
      failure.attempt(), failure.attempt() == 1 ? " attempt" : " attempts", ", next at ",
      absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(failure.next_retry_unix_ms()),
                       absl::LocalTimeZone()),
      "); `parley resolve ", unit, "` retries it now, `--skip` drops it");
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, opts);
  return json;
}

}  // namespace parley::cli

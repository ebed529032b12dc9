// The commands for running a model elsewhere: cert (for other hosts and operators),
// metrics-config (Prometheus), export (Kubernetes, compose), host-unit and probe (a pod's entry
// point and probes) (docs/cli.md, docs/deploy.md).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/definition/definition.h"
#include "tools/cli/commands/commands.h"
#include "tools/cli/deploy/export_kubernetes.h"
#include "tools/cli/deploy/pki.h"
#include "tools/cli/deploy/unit_host.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;
using services::LoadModel;
using services::Model;

}  // namespace

absl::Status Cert(Session& s, const Args& args) {
  auto list = [](const std::string& text) {
    std::vector<std::string> out = absl::StrSplit(text, ',', absl::SkipEmpty());
    return out;
  };
  const std::string name = args.positional[0];
  if (name == "cli" || name == "local" || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is reserved or not a host name"));
  }
  // The lock keeps two commands from making the model's CA at once.
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  const bool op = args.Has("--operator");
  ASSIGN_OR_RETURN(CertFiles files,
                   IssueCert(s.dir().pki_dir(), name, op ? CertRole::kOperator : CertRole::kHost,
                             list(args.Get("--ip")), list(args.Get("--dns")), args.Get("--out")));
  if (files.reissued) {
    std::fprintf(stderr, "replaced %s: it was made before certificates had roles\n",
                 files.cert.c_str());
  }
  std::printf("%s\n%s\n%s\n\n", files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  if (op) {
    std::printf(
        "An operator certificate: a client of the agent API presents cert.pem with key.pem and "
        "trusts ca.pem (docs/api.md).\n");
  } else {
    std::printf(
        "On that host:\n  parleyd --data DIR --listen ADDRESS:PORT --tls_cert %s --tls_key %s "
        "--tls_ca %s\n",
        files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  }
  return absl::OkStatus();
}

// The format of deploy/prometheus/README.md: one `parley` job, one target per parleyd of the
// model, every series labelled with the model's name.
absl::Status MetricsConfig(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  if (!args.positional.empty() && AbsolutePath(args.positional[0]) != s.state().model_file()) {
    return absl::FailedPreconditionError(absl::StrCat("the model directory ", s.dir().path(),
                                                      " runs ", s.state().model_file(), ", not ",
                                                      args.positional[0], " (pass --model-dir)"));
  }
  std::vector<std::string> targets;
  std::vector<const v1::HostRecord*> hosts;
  if (!s.state().runtime().engine().empty()) {
    // A container per unit: each parleyd serves /metrics on kMetricsPort of its address.
    for (const v1::UnitRecord* u : s.AllUnits()) {
      targets.push_back(
          absl::StrCat(u->address().substr(0, u->address().rfind(':')), ":", kMetricsPort));
    }
  } else if (std::any_of(
                 s.state().services().begin(), s.state().services().end(),
                 [](const auto& svc) { return svc.host().empty() || svc.host() == "local"; })) {
    hosts.push_back(&s.state().host());
  }
  for (const auto& h : s.state().hosts()) hosts.push_back(&h);
  for (const v1::HostRecord* h : hosts) {
    if (h->metrics_address().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "parleyd ", h->name(), " at ", h->address(),
          " serves no metrics (start it with --metrics_listen, then run parley up again)"));
    }
    std::string target = h->metrics_address();
    // A wildcard listen address is reached at the host the peers reach.
    for (absl::string_view any : {"0.0.0.0:", "[::]:"}) {
      if (absl::StartsWith(target, any)) {
        target = absl::StrCat(h->address().substr(0, h->address().rfind(':')), ":",
                              target.substr(any.size()));
      }
    }
    if (std::find(targets.begin(), targets.end(), target) == targets.end()) {
      targets.push_back(target);
    }
  }
  ASSIGN_OR_RETURN(absl::Duration interval, ParseDuration(args.Get("--interval", "15s")));
  const std::string every = absl::StrCat(absl::ToInt64Seconds(interval), "s");
  const std::string name =
      args.Get("--name", fs::path(s.state().model_file()).parent_path().filename().string());
  std::string out = absl::StrCat(
      "# Parley: scrape every parleyd of a model (deploy/prometheus/README.md).\n"
      "global:\n  scrape_interval: ",
      every, "\n  evaluation_interval: ", every, "\n");
  if (args.Has("--rules")) {
    absl::StrAppend(&out, "rule_files:\n  - ", AbsolutePath(args.Get("--rules")), "\n");
  }
  absl::StrAppend(&out, "scrape_configs:\n  - job_name: parley\n    scrape_interval: ", every,
                  "\n    metrics_path: /metrics\n    static_configs:\n      - targets:\n");
  for (const auto& t : targets) absl::StrAppend(&out, "          - ", t, "\n");
  absl::StrAppend(&out, "        labels:\n          model: ", name, "\n");
  std::printf("%s", out.c_str());
  return absl::OkStatus();
}

absl::Status Export(const Args& args) {
  if (args.positional[0] != "kubernetes" && args.positional[0] != "compose") {
    return absl::InvalidArgumentError(absl::StrCat("export: unknown format '", args.positional[0],
                                                   "' (known: kubernetes, compose)"));
  }
  ASSIGN_OR_RETURN(Model model, LoadModel(args.positional[1]));
  if (args.positional[0] == "compose") {
    if (!args.Has("-o")) {
      return absl::InvalidArgumentError("export compose: -o DIR is required (a project directory)");
    }
    ComposeOptions options;
    options.image = args.Get("--image", options.image);
    RETURN_IF_ERROR(ExportCompose(model, args.Get("-o"), options));
    std::fprintf(stderr,
                 "wrote %s/compose.yaml; start it with: podman-compose -f %s/compose.yaml up -d\n",
                 args.Get("-o").c_str(), args.Get("-o").c_str());
    return absl::OkStatus();
  }
  KubernetesOptions options;
  options.image = args.Get("--image", options.image);
  options.name_space = args.Get("--namespace");
  options.storage = args.Get("--storage", options.storage);
  ASSIGN_OR_RETURN(std::string manifests, ExportKubernetes(model, options));
  if (!args.Has("-o")) {
    std::fwrite(manifests.data(), 1, manifests.size(), stdout);
    return absl::OkStatus();
  }
  std::ofstream out(args.Get("-o"), std::ios::trunc);
  out << manifests;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", args.Get("-o")));
  return absl::OkStatus();
}

int HostUnitCommand(const Args& args) {
  HostUnitOptions o;
  o.plan_file = args.Get("--plan", kPlanFile);
  o.unit = args.Get("--unit");
  o.bundles_dir = kBundlesDir;
  o.data_dir = kUnitDataDir;
  o.parleyd = FindBinary("parleyd");
  o.port = kAgentPort;
  o.metrics_port = kMetricsPort;
  return HostUnit(o);
}

absl::Status ProbeCommand(const Args& args) {
  return Probe(args.Get("--address", absl::StrCat("127.0.0.1:", kAgentPort)), args.Has("--ready"),
               args.Get("--plan"));
}

}  // namespace parley::cli

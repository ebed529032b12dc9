// parleyd: hosts service agents behind one gRPC server.
//
//   parleyd --data DIR --listen 127.0.0.1:7000 --agents app/0=relay,db/0=recorder --plaintext
//
// SIGTERM or SIGINT: the run in progress finishes, commits become durable, streams close; a
// restart on the same --data resumes where it stopped.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "prometheus/exposer.h"
#include "services/backends/backends.h"
#include "services/coord/etcd_coordinator.h"
#include "services/definition/definition.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"

ABSL_FLAG(std::string, data, "", "Directory of the agents' knowledge base (created if missing)");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "host:port of the peer and agent API server");
ABSL_FLAG(std::string, advertise, "", "Address peers dial (default: the listen address)");
ABSL_FLAG(std::string, agents, "",
          "Agents to host: unit=kind,... (kinds: relay, recorder, "
          "flaky, proposer, acceptor)");
ABSL_FLAG(std::string, definitions, "",
          "Agents to host from service definitions: unit=DIR,... (DIR holds service.yaml)");
ABSL_FLAG(std::string, interfaces, "", "Directory of interface schemas shared by definitions");
ABSL_FLAG(std::string, durability, "group", "KB durability: group (group commit) or sync");
ABSL_FLAG(int, threads, 2, "Worker threads running the agents");
ABSL_FLAG(std::string, metrics_listen, "", "host:port serving /metrics (off when empty)");
ABSL_FLAG(bool, plaintext, false, "Serve and dial without TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of this process");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of this process");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that signs peers (mutual TLS when set)");
ABSL_FLAG(std::string, tls_server_name, "", "Name expected in peers' certificates");
ABSL_FLAG(std::string, address_file, "", "Write the bound address here once listening");
ABSL_FLAG(bool, log_stderr, true, "Echo the agents' log to stderr");
ABSL_FLAG(std::string, state_dir, "",
          "Directory of the units' state directories (PARLEY_STATE_DIR of their programs)");
ABSL_FLAG(std::string, unit_host, "127.0.0.1",
          "The address peers reach this host's units at (PARLEY_UNIT_HOST for their programs)");
ABSL_FLAG(std::string, program_user, "parley",
          "The user handler programs run as when their service.yaml names none (user:), when "
          "parleyd runs as root; empty: parleyd's own user");
ABSL_FLAG(int, update_interval_s, 0, "Fire `update` this often (0: never)");
ABSL_FLAG(std::string, etcd, "",
          "Comma-separated host:port of the etcd members that services declaring leadership "
          "campaign through (none: such units never lead)");
ABSL_FLAG(std::string, etcd_ca, "", "PEM CA of the etcd members (mutual TLS with etcd when set)");
ABSL_FLAG(std::string, etcd_cert, "", "PEM client certificate shown to etcd");
ABSL_FLAG(std::string, etcd_key, "", "PEM private key of --etcd_cert");
ABSL_FLAG(std::string, election_prefix, "parley/leader/",
          "Prefix of the leadership elections' keys in etcd (one per model sharing an etcd)");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "parleyd: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Hosts Parley service agents. See docs/protocol.md.");
  absl::ParseCommandLine(argc, argv);
  // A crash prints the crashing thread's stack on stderr (then the default action: a core).
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());

  // Signals are taken synchronously by this thread, so every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  namespace ps = parley::services;
  ps::HostOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data);
  if (options.data_dir.empty()) return Fail("--data is required");
  options.listen = absl::GetFlag(FLAGS_listen);
  options.advertise = absl::GetFlag(FLAGS_advertise);
  options.threads = absl::GetFlag(FLAGS_threads);
  const std::string durability = absl::GetFlag(FLAGS_durability);
  if (durability == "sync") {
    options.durability = parley::kb::Durability::kSync;
  } else if (durability != "group") {
    return Fail("--durability must be 'group' or 'sync', not '" + durability + "'");
  }
  options.tls.plaintext = absl::GetFlag(FLAGS_plaintext);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls.server_name_override = absl::GetFlag(FLAGS_tls_server_name);
  for (absl::string_view e : absl::StrSplit(absl::GetFlag(FLAGS_etcd), ',', absl::SkipEmpty())) {
    options.etcd.endpoints.emplace_back(e);
  }
  options.etcd.ca_file = absl::GetFlag(FLAGS_etcd_ca);
  options.etcd.cert_file = absl::GetFlag(FLAGS_etcd_cert);
  options.etcd.key_file = absl::GetFlag(FLAGS_etcd_key);
  options.election_prefix = absl::GetFlag(FLAGS_election_prefix);
  if (!options.etcd.endpoints.empty()) {
    // Bad coordinator options are refused at startup, not on each unit's first campaign.
    if (auto c = parley::coord::NewEtcdCoordinator(options.etcd); !c.ok()) {
      return Fail(absl::StrCat("--etcd: ", c.status().message()));
    }
  }
  options.registry = std::make_shared<prometheus::Registry>();

  std::unique_ptr<prometheus::Exposer> exposer;
  if (const std::string m = absl::GetFlag(FLAGS_metrics_listen); !m.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(m);
    } catch (const std::exception& e) {
      return Fail("--metrics_listen " + m + ": " + e.what());
    }
    exposer->RegisterCollectable(options.registry);
    // Where Prometheus reaches it: a wildcard listen address is advertised as the peer address's
    // host, like --advertise.
    options.metrics_address = m;
  }

  options.version = PARLEY_VERSION;
  options.recipe_agent_options.update_interval =
      absl::Seconds(absl::GetFlag(FLAGS_update_interval_s));
  // Agents from service definitions run exec/ansible/... actions; the factory outlives the host
  // (the actions it made keep copies of what they need).
  ps::BackendOptions backends;
  // parley-hook is installed beside parleyd; an absolute path, since programs run elsewhere.
  backends.process.extra_path.push_back(std::filesystem::absolute(argv[0]).parent_path().string());
  backends.process.state_root = absl::GetFlag(FLAGS_state_dir);
  backends.process.unit_host = absl::GetFlag(FLAGS_unit_host);
  backends.process.default_user = absl::GetFlag(FLAGS_program_user);
  ps::Host* h = nullptr;
  backends.log = [&h](absl::string_view unit, absl::string_view handler, absl::string_view source,
                      absl::string_view text) {
    if (h == nullptr) return;
    parley::v1::LogRecord r;
    r.set_agent(std::string(unit));
    r.set_level(source == "stderr" ? parley::v1::LOG_LEVEL_WARNING : parley::v1::LOG_LEVEL_INFO);
    // A program's line ends with its newline; the log's records have none.
    r.set_message(
        absl::StrCat(handler, " ", source, ": ", absl::StripTrailingAsciiWhitespace(text)));
    h->logs().Add(std::move(r));
  };
  // Programs carry their unit's cookie, so that removing the unit stops what they left running.
  backends.process.unit_cookie = [&h](const std::string& unit) -> absl::StatusOr<std::string> {
    if (h == nullptr) return absl::UnavailableError("parleyd is not serving");
    return h->UnitCookie(unit);
  };
  std::shared_ptr<ps::BackendRegistry> factory = ps::MakeBackends(std::move(backends));
  options.build_agent =
      [factory](const parley::v1::AgentRecipe& r) -> absl::StatusOr<parley::engine::ServiceSpec> {
    auto def = ps::LoadServiceDefinition(r.definition_dir(), r.interfaces_dir());
    if (!def.ok()) return def.status();
    return ps::BuildSpec(*def, r.agent(), *factory);
  };

  auto host = ps::Host::Start(options);
  if (!host.ok()) return Fail(std::string(host.status().message()));
  (*host)->logs().set_echo(absl::GetFlag(FLAGS_log_stderr));
  h = host->get();

  ps::AgentOptions agent_options;
  agent_options.update_interval = absl::Seconds(absl::GetFlag(FLAGS_update_interval_s));
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_agents), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.second.empty()) return Fail("--agents: '" + std::string(item) + "' is not unit=kind");
    auto spec = ps::BuiltinService(kv.second, kv.first);
    if (!spec.ok()) return Fail("--agents: " + std::string(spec.status().message()));
    if (auto a = (*host)->AddAgent(std::move(*spec), agent_options); !a.ok()) {
      return Fail(std::string(a.status().message()));
    }
  }

  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_definitions), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.second.empty())
      return Fail("--definitions: '" + std::string(item) + "' is not unit=DIR");
    auto def = ps::LoadServiceDefinition(kv.second, absl::GetFlag(FLAGS_interfaces));
    if (!def.ok()) return Fail("--definitions: " + std::string(def.status().message()));
    auto spec = ps::BuildSpec(*def, kv.first, *factory);
    if (!spec.ok()) return Fail("--definitions: " + std::string(spec.status().message()));
    if (auto a = (*host)->AddAgent(std::move(*spec), agent_options); !a.ok()) {
      return Fail(std::string(a.status().message()));
    }
  }
  // Agents added through the API (parley up) were recorded; host them again.
  if (absl::Status s = (*host)->RestoreAgents(); !s.ok()) {
    std::fprintf(stderr, "parleyd: %s\n", std::string(s.message()).c_str());
  }

  if (const std::string f = absl::GetFlag(FLAGS_address_file); !f.empty()) {
    const std::string tmp = f + ".tmp";
    std::ofstream(tmp) << (*host)->address() << "\n";
    std::rename(tmp.c_str(), f.c_str());
  }
  std::fprintf(stderr, "parleyd: listening on %s\n", (*host)->address().c_str());

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "parleyd: signal %d, shutting down\n", sig);
  // A shutdown that takes long says what it waits for, every 5 s, until it is done.
  absl::Notification shut_down;
  std::thread watchdog([&] {
    for (int waited = 5; !shut_down.WaitForNotificationWithTimeout(absl::Seconds(5)); waited += 5) {
      std::fprintf(stderr, "parleyd: still shutting down after %ds: %s\n", waited,
                   (*host)->shutdown_phase());
    }
  });
  (*host)->Shutdown();
  shut_down.Notify();
  watchdog.join();
  // Runs finished and their commits are durable; closing the store ends the host. Programs'
  // output has nowhere to go from here.
  h = nullptr;
  host->reset();
  // The metrics listener would take another second to stop (its server polls for a stop once a
  // second); an exiting process need not wait for it.
  std::fflush(nullptr);
  _exit(0);
}

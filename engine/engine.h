#pragma once

// The service engine: takes events one at a time from the agent's durable FIFO inbox and runs the
// handlers whose preconditions hold until nothing is left, all in one knowledge-base transaction.
// docs/engine.md is the specification; in short, a run
//  1. opens a transaction and applies the event's relation data change (and the relationship
//     facts derived from it: <endpoint>.joined, <endpoint>.ready, <endpoint>.remote.<key>);
//  2. fires the event: queues, in declaration order, each handler whose `on` holds it and whose
//     facts hold; the event is then inactive;
//  3. queues each dirty fact-only handler whose facts hold;
//  4. runs the queue head, then retests: drops queued handlers whose facts no longer hold and
//     appends handlers on events it fired, then dirty fact-only handlers now satisfied;
//  5. commits when the queue is empty: facts, relation data, outbox, inbox removal, bookkeeping
//     and the run's trace in one atomic write;
//  6. on a handler failure (or more than max_handler_executions) rolls everything back; the event
//     stays at the inbox head and is retried with jittered exponential backoff.
//
// Thread-compatible: an Engine, its Kb and its actions belong to one serial executor.
//
// The parts of a run live beside it, internal to engine/: the handler graph (handler_graph.h), the
// inbox (inbox.h) and what an operator does with its failed head (resolve.cc), relations and their
// derived facts (relations.h), the outbox and sequences (outbox.h), traces (trace.h), the KB key
// layout (key_layout.h) and the state of the run in progress (run.h). What a handler sees is
// RunContext (run_context.h).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "engine/run_context.h"
#include "engine/spec.h"
#include "kb/kb.h"
#include "parley/v1/kb.pb.h"

namespace parley::base {
class Backoff;
}  // namespace parley::base

namespace parley::engine {

struct FactState;
struct Handler;
class HandlerGraph;
class Inbox;
class Outbox;
class Relations;
struct Run;
enum class Reason;

// "handler <name>: <message>", or the message for a failure outside a handler.
std::string FailureText(const v1::RunFailure& failure);

// "joined", "changed", "departed", "broken" or "created"; empty for an unspecified kind. A
// relationship event is named "<endpoint>.<kind name>".
absl::string_view RelationKindName(v1::RelationEventKind kind);

struct EngineOptions {
  // A run that executes more handlers than this fails, naming the handlers that cycled.
  uint32_t max_handler_executions = 10000;
  // Retry backoff after a failed run: initial delay, doubling up to max, each delay shortened by
  // a random fraction of up to `retry_jitter`.
  absl::Duration retry_initial = absl::Seconds(1);
  absl::Duration retry_max = absl::Minutes(5);
  double retry_jitter = 0.2;
  // Seed of the jitter's random source.
  uint64_t random_seed = 0x9e3779b97f4a7c15ULL;
  // Traces kept in the KB (the newest ones).
  uint32_t traces_kept = 100;
};

enum class RunOutcome {
  kIdle,       // the inbox is empty
  kNotDue,     // the head event failed before and its retry is not due yet
  kCommitted,  // the head event was applied
  kFailed,     // the run rolled back; see Engine::failure()
};

struct RunResult {
  RunOutcome outcome = RunOutcome::kIdle;
  uint64_t run = 0;
  // Durability ticket of the commit (kCommitted) or of the failure record (kFailed).
  uint64_t ticket = 0;
  // kNotDue / kFailed: when the head event may be tried again.
  absl::Time next_attempt = absl::InfinitePast();
  uint32_t handlers_run = 0;
  // Wall time spent in the run before the commit write (handlers, retests, bookkeeping).
  absl::Duration handler_time;
  std::shared_ptr<const v1::Trace> trace;
};

// What an operator does with a failed inbox head (Engine::Resolve).
enum class ResolveMode {
  kRetry,  // try it again now, backing off from the initial delay again if it fails
  kSkip,   // drop it unapplied
};

struct ResolveResult {
  // The failure resolved, as it stood before.
  v1::RunFailure failure;
  // Durability ticket of the change.
  uint64_t ticket = 0;
  // kSkip: the run number the skip is traced under, and its trace.
  uint64_t run = 0;
  std::shared_ptr<const v1::Trace> trace;
};

// What a retry of the failed head found behind it (relation_state.cc).
struct RetryPrep {
  // A `departed` of the head's remote unit or a `broken` of its relation: the head is cancelled.
  std::optional<v1::Event> cancelled_by;
  // Later `changed` events of the same relation and unit whose changes the head now carries.
  std::vector<uint64_t> folded;
};

struct EnqueueResult {
  uint64_t event_id = 0;
  // Durability ticket; acknowledge the event to its sender only once this is durable.
  uint64_t ticket = 0;
  // EnqueueFromPeer: true when the sequence was already received (nothing was written).
  bool duplicate = false;
};

class Engine {
 public:
  // Validates `spec` and loads the agent's state from `kb` (not owned; must outlive the engine).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(ServiceSpec spec, kb::Kb* kb,
                                                        base::Clock* clock,
                                                        EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Appends `event` to the durable inbox (its id is assigned here) in a transaction of its own.
  absl::StatusOr<EnqueueResult> Enqueue(v1::Event event);

  // Appends `events`, in order, in one transaction: all of them or none (an agent's first events,
  // install and its initial config, must not be split by a crash). Returns the last one's id; the
  // ticket covers them all.
  absl::StatusOr<EnqueueResult> EnqueueAll(std::vector<v1::Event> events);

  // Changes config: sets `set`, removes `unset`. Config is a state, not a stream of events: the
  // change is made against the config the inbox already leads to (the committed config with the
  // changes of every config.changed event still queued). When config.changed events are queued,
  // the first of them is rewritten to carry the whole change from the committed config to the
  // new one and the later ones carry none, so a value that made a handler fail can be corrected
  // (if the first one is the failing inbox head, it is retried at once). Otherwise a new
  // config.changed is queued. Returns the id of the event that will apply it, 0 when the config
  // the inbox leads to does not change.
  absl::StatusOr<EnqueueResult> ChangeConfig(const std::map<std::string, std::string>& set,
                                             const std::vector<std::string>& unset);

  // Appends a relation event received from the remote unit it names, with the sender's
  // sequence number for (relation, sender, this agent). Exactly once, in order: a sequence
  // already received is reported as a duplicate and changes nothing; a gap is OUT_OF_RANGE.
  // The event was checked where it arrived (services/agent/delivery.h, AcceptEvent, with
  // CheckPeerEvent and ValidateEvent below): it is not checked again here.
  absl::StatusOr<EnqueueResult> EnqueueFromPeer(v1::Event event, uint64_t sequence);

  // Why the engine cannot take `event` in its inbox, if it cannot: no name, a relation change
  // on an endpoint the service does not declare, with no relation id or kind, named other than
  // "<endpoint>.<kind>", without the remote unit a joined, departed or created event names, or
  // with an empty or invalid key; a relationship event without its relation. INVALID_ARGUMENT.
  // Enqueue and EnqueueAll call it; for events from peers, the boundary does.
  absl::Status ValidateEvent(const v1::Event& event) const;

  // The timer `name` is due: removes it and enqueues `timer.<name>` in one transaction.
  absl::StatusOr<EnqueueResult> EnqueueTimer(absl::string_view name);

  // `destination` acknowledged every event of `relation_id` up to `sequence`: removes them from
  // the outbox. Returns the durability ticket (0 when nothing changed).
  absl::StatusOr<uint64_t> Acknowledge(absl::string_view destination, absl::string_view relation_id,
                                       uint64_t sequence);

  // Unsticks the failed inbox head, the event every later one waits behind (resolve.cc).
  // kRetry makes its retry due now, restarts its backoff and records `by` for the retried run's
  // trace. kSkip removes it from the inbox unapplied, in one transaction with the removal of its
  // failure record and a RESULT_SKIPPED trace naming `by`: nothing it carries is applied, and a
  // relation event's sequence stays received, so its sender's redelivery is a duplicate.
  // FAILED_PRECONDITION when the head has not failed, or when `event_id` (0: whichever) is not
  // the failed event.
  absl::StatusOr<ResolveResult> Resolve(ResolveMode mode, uint64_t event_id, absl::string_view by);

  // Processes the inbox head if there is one and it is due.
  absl::StatusOr<RunResult> RunOnce();

  // Runs until the inbox is empty or its head is not due, then waits until everything committed
  // is durable. Returns the last result.
  absl::StatusOr<RunResult> RunUntilIdle();

  // Inspection. Facts are those committed or staged by the current run.
  bool IsSet(absl::string_view fact) const;
  std::optional<std::string> FactValue(absl::string_view fact) const;
  // Every fact currently set, with its value, sorted by name.
  std::map<std::string, std::string> Facts() const;
  const std::optional<v1::RunFailure>& failure() const { return failure_; }
  v1::WorkloadStatus workload_status() const { return status_; }
  size_t inbox_depth() const;
  // The newest `n` traces, oldest first.
  absl::StatusOr<std::vector<v1::Trace>> Traces(size_t n) const;
  // Outbox entries in the order they must be sent, for one destination or all.
  absl::StatusOr<std::vector<v1::OutboxEntry>> Outbox(absl::string_view destination = "") const;
  // Up to `limit` entries for `destination` with ids in (after, through], in id order.
  absl::StatusOr<std::vector<v1::OutboxEntry>> OutboxAfter(absl::string_view destination,
                                                           uint64_t after, size_t limit,
                                                           uint64_t through = UINT64_MAX) const;
  size_t outbox_size() const;
  // Agents with unacknowledged outbox entries.
  std::set<std::string> OutboxDestinations() const;
  // How many entries each of them has not acknowledged yet.
  std::map<std::string, size_t> OutboxUnackedByDestination() const;
  // The id of the newest outbox entry ever staged (0: none).
  uint64_t last_outbox_id() const;
  // Why a relation event from `sender` about `relation_id` must be refused, if it must: the
  // relation was never known here (and the event is not an introduction), or the sender is not
  // party to it. Stale events about a broken relation are not refused.
  absl::Status CheckPeerEvent(absl::string_view relation_id, absl::string_view sender,
                              v1::RelationEventKind kind) const;
  // Timers handlers asked for, by name, with their due time.
  const std::map<std::string, absl::Time>& timers() const { return timers_; }

  // A unit's life (lifecycle.cc; docs/engine.md, "A unit's life"). BeginRemoval queues the
  // `stop` event that makes the unit dying, and after it `then` (the agent's departures of its
  // relations), in one write, once: later calls queue nothing (event_id 0).
  absl::StatusOr<EnqueueResult> BeginRemoval(absl::string_view by,
                                             std::vector<v1::Event> then = {});
  v1::UnitStage stage() const;

  // The workload's health (health.cc; docs/service-definitions.md, "Health"). EnqueueHealth
  // queues `workload.healthy` (HEALTHY) or `workload.unhealthy` (UNHEALTHY) with `params` (the
  // probe and its error), in a transaction of its own, unless the inbox already leads to that
  // health: then it queues nothing (event_id 0), so only transitions become events, also across
  // restarts. Applying the event sets or clears the fact workload.healthy.
  absl::StatusOr<EnqueueResult> EnqueueHealth(v1::WorkloadHealth health,
                                              std::map<std::string, std::string> params = {});
  // The health of the newest health event queued (UNSPECIFIED before the first).
  absl::StatusOr<v1::WorkloadHealth> QueuedHealth() const;
  const std::map<std::string, std::string>& config() const { return config_; }
  uint64_t runs() const { return run_counter_; }
  const std::map<std::string, v1::RelationRecord>& relations() const;
  // Committed data of a bag: `bag` is "lu" (local unit), "ls" (local service), "ru:<unit>"
  // (remote unit) or "rs" (remote service).
  absl::StatusOr<std::map<std::string, std::string>> Bag(absl::string_view relation_id,
                                                         absl::string_view bag) const;
  const ServiceSpec& spec() const { return spec_; }
  kb::Kb* kb() const { return kb_; }

  // Leadership (leadership.cc; docs/coordination.md). A run that wrote the service bag commits
  // only if `check` says the term it wrote under is still current (the agent asks the
  // coordinator); an error from it fails the run, which is retried. Without a check such a run
  // commits on the engine's own view. Set it before the first run.
  using TermCheck = std::function<absl::StatusOr<bool>(int64_t term)>;
  void SetTermCheck(TermCheck check) { term_check_ = std::move(check); }
  // The leadership term this unit leads in as committed or staged (0: it does not lead).
  int64_t LeadingTerm() const;
  // Service-bag changes from remote services ignored as older than a term already applied.
  uint64_t stale_service_changes() const;

 private:
  friend class RunContext;

  Engine(ServiceSpec spec, kb::Kb* kb, base::Clock* clock, EngineOptions options);
  // Reads the committed state into memory: at start, and after a run failed or did not commit.
  absl::Status Load();
  absl::Status LoadFacts();
  absl::Status LoadHandlers();
  absl::Status LoadStage();

  // A run (engine.cc; queueing and running handlers: handler_queue.cc).
  absl::StatusOr<RunResult> Execute(v1::Event event, uint32_t attempt);
  absl::Status ApplyConfigChange(const v1::Event& event);
  absl::Status ApplyRelationChange(const v1::Event& event);
  absl::Status ApplyLifecycle(const v1::Event& event);
  absl::Status ApplyLeadership(const v1::Event& event);
  // Why this run may not write the service bag, if it may not (RunContext::SetData).
  absl::Status CheckServiceWrite();
  // Why this run may not commit the service data it wrote, if it may not.
  absl::Status CheckTermAtCommit();
  absl::Status ApplyHealth(const v1::Event& event);
  absl::Status ValidateHealthEvent(const v1::Event& event) const;
  void FireEvent(absl::string_view event, const Handler* by);
  void Retest();
  void Queue(Handler* h, Reason reason, absl::string_view reason_event);
  absl::Status RunHandler(Handler* h);
  std::string FailedPrecondition(const Handler& h) const;
  absl::StatusOr<uint64_t> CommitRun(const v1::Event& event, v1::Trace& trace);
  absl::StatusOr<RunResult> FailRun(const v1::Event& event, uint32_t attempt, std::string handler,
                                    std::string message, v1::Trace& trace);

  // Fact changes staged by the current run (handler_queue.cc). Relationship facts are `derived`:
  // only the relation data sets them.
  absl::Status SetFact(absl::string_view name, absl::string_view value, bool derived);
  absl::Status ClearFact(absl::string_view name, bool derived);
  void ChangeFact(FactState& f, bool set, absl::string_view value);
  // Makes the relationship facts of `endpoint` exactly `want`.
  absl::Status SetDerivedFacts(const EndpointSpec& endpoint,
                               const std::map<std::string, std::string>& want);

  // Relation data as a state at a retry (relation_state.cc): fold the newer changes of the head's
  // relation and unit into it (staged in txn_), or find what cancels it; cancel it; and, when
  // events arrive, make the failed head's retry due now if they are news about its relation and
  // unit (staged in `txn`; RetrySoonerCommitted once the commit's outcome is known).
  absl::StatusOr<RetryPrep> PrepareRetry(v1::Event& head);
  absl::StatusOr<RunResult> CancelHead(const v1::Event& head, const v1::Event& by, uint32_t attempt,
                                       absl::string_view apply_error);
  std::string CancelReason(const v1::Event& by, absl::string_view what) const;
  // Removes the failed head unapplied in `txn` with `trace` (its trigger and run number), and
  // commits: a skip (resolve.cc) and a cancellation that could not apply.
  absl::StatusOr<uint64_t> DropHead(kb::Txn& txn, const v1::Trace& trace);
  absl::Status RetrySoonerFor(kb::Txn& txn, const std::vector<v1::Event>& arrived);
  void RetrySoonerCommitted(bool committed);

  // Retrying later (retry_later.cc): the retry a handler asked for is staged as a timer and the
  // event it will enqueue; a fact-only handler is held until its timer is due; the retry's run
  // queues only its handler.
  void StageRetryLater(const Handler& h, absl::Duration delay);
  bool HeldForRetry(const Handler& h) const;
  void QueueRetry(const v1::Event& event);
  absl::StatusOr<EnqueueResult> EnqueueRetryLater(absl::string_view timer);
  void DropRetries(kb::Txn& txn);

  ServiceSpec spec_;
  kb::Kb* kb_;
  base::Clock* clock_;
  const EngineOptions options_;
  std::unique_ptr<base::Backoff> retry_;
  std::unique_ptr<HandlerGraph> graph_;
  std::unique_ptr<Inbox> inbox_;
  std::unique_ptr<Relations> relations_;
  std::unique_ptr<engine::Outbox> outbox_;

  // Committed (or, during a run, staged) agent state.
  uint64_t change_clock_ = 0;
  uint64_t run_counter_ = 0;
  // Fact-only handlers that may have become dirty and satisfied since the last retest.
  std::vector<Handler*> pending_;
  std::map<std::string, std::string> config_;
  std::map<std::string, absl::Time> timers_;
  std::optional<v1::RunFailure> failure_;
  // The failure record an enqueue is about to commit with its retry due now.
  std::optional<v1::RunFailure> retry_sooner_;
  v1::WorkloadStatus status_;
  v1::UnitStage stage_ = v1::UNIT_STAGE_INSTALLING;
  // A removal's `stop` is queued (it may not have run yet).
  bool removal_queued_ = false;

  TermCheck term_check_;

  std::unique_ptr<kb::Txn> txn_;
  std::unique_ptr<Run> run_;
};

}  // namespace parley::engine

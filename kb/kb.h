#pragma once

// The knowledge base of one agent: a namespace of a Store, split into keyspaces, changed only by
// transactions. Reads through a Txn see its own writes, save points let a part of it be undone,
// and Commit applies all of it in one atomic write (underneath, a RocksDB WriteBatchWithIndex;
// no RocksDB type appears in this header).
//
// A Kb and its transactions belong to the agent's serial executor: one thread at a time.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kb/store.h"

namespace parley::kb {

// Keyspaces. The byte is part of every key, after the agent's name.
enum class Space : char {
  kMeta = 'm',      // counters and status of the agent
  kFact = 'f',      // fact name -> FactRecord
  kRelation = 'r',  // relation id -> RelationRecord
  kBag = 'b',       // relation data: relation id, bag, key -> value
  kInbox = 'i',     // big-endian event id -> Event
  kOutbox = 'o',    // big-endian entry id -> OutboxEntry
  kCursor = 'c',    // (relation, sender) -> last sequence applied or sent
  kHandler = 'h',   // handler name -> bookkeeping
  kTrace = 't',     // big-endian run number -> Trace
};

// Big-endian encoding, so that keys sort as the numbers do.
std::string EncodeU64(uint64_t v);
absl::StatusOr<uint64_t> DecodeU64(absl::string_view s);

// Called for each key/value in order; return false to stop.
using ScanFn = std::function<bool(absl::string_view key, absl::string_view value)>;

class Kb;

class Txn {
 public:
  explicit Txn(Kb* kb);
  ~Txn();
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  void Put(Space space, absl::string_view key, absl::string_view value);
  void Delete(Space space, absl::string_view key);
  // For keys this transaction never reads back (written once, at commit): they go into the batch
  // without entering the index, so Get and Scan through the transaction do not see them.
  void PutUnindexed(Space space, absl::string_view key, absl::string_view value);
  void DeleteUnindexed(Space space, absl::string_view key);
  // Deletes every key of `space` that starts with `prefix`, as seen through this transaction.
  absl::Status DeletePrefix(Space space, absl::string_view prefix);

  // Deletes the whole knowledge base of another agent `agent` of the same store, every keyspace,
  // when this transaction commits: after its other writes, in the same atomic write (so a host
  // can forget an agent and delete its keys at once). Reads through the transaction do not see
  // the deletion. INVALID_ARGUMENT for this transaction's own agent or a name Kb::Open refuses;
  // FAILED_PRECONDITION while a save point is set (it could not be undone).
  absl::Status DeleteAgent(absl::string_view agent);

  // Reads through the transaction: its own writes first, then the committed state.
  absl::StatusOr<std::optional<std::string>> Get(Space space, absl::string_view key) const;
  // Iterates keys of `space` starting with `prefix` (prefix stripped), own writes merged in.
  absl::Status Scan(Space space, absl::string_view prefix, const ScanFn& fn) const;

  void SetSavePoint();
  // Undoes every write since the last SetSavePoint and forgets that save point.
  absl::Status RollbackToSavePoint();
  // Forgets the last save point, keeping its writes.
  absl::Status PopSavePoint();
  // Drops every write.
  void Clear();

  size_t write_count() const;
  bool empty() const { return write_count() == 0; }

 private:
  friend class Kb;
  struct Rep;  // the batch (kb.cc)

  Kb* kb_;
  std::unique_ptr<Rep> rep_;
};

class Kb {
 public:
  // Opens the namespace of `agent` in `store` (not owned; must outlive the Kb). Agent names are
  // non-empty and contain no NUL.
  static absl::StatusOr<std::unique_ptr<Kb>> Open(Store* store, absl::string_view agent);

  std::unique_ptr<Txn> Begin() { return std::make_unique<Txn>(this); }

  // Applies `txn` atomically and returns its durability ticket (see Store). The transaction is
  // left empty and may be reused.
  absl::StatusOr<uint64_t> Commit(Txn& txn);

  // Reads the committed state.
  absl::StatusOr<std::optional<std::string>> Get(Space space, absl::string_view key) const;
  absl::Status Scan(Space space, absl::string_view prefix, const ScanFn& fn) const;
  // Like Scan, but starts at the first key >= prefix + `from` (keys passed to `fn` still have
  // only `prefix` stripped).
  absl::Status ScanFrom(Space space, absl::string_view prefix, absl::string_view from,
                        const ScanFn& fn) const;

  Store* store() const { return store_; }
  const std::string& agent() const { return agent_; }
  std::string Key(Space space, absl::string_view key) const;
  // The exclusive upper bound of every key in `space` starting with `prefix`.
  std::string UpperBound(Space space, absl::string_view prefix) const;
  size_t prefix_size() const { return agent_.size() + 2; }

 private:
  friend class Txn;
  Kb(Store* store, std::string agent) : store_(store), agent_(std::move(agent)) {}
  StoreImpl& impl() const;

  Store* store_;
  const std::string agent_;
};

}  // namespace parley::kb

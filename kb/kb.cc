#include "kb/kb.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kb/store_impl.h"
#include "rocksdb/comparator.h"
#include "rocksdb/utilities/write_batch_with_index.h"

namespace parley::kb {

std::string EncodeU64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i) {
    s[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return s;
}

absl::StatusOr<uint64_t> DecodeU64(absl::string_view s) {
  if (s.size() != 8) {
    return absl::DataLossError(
        absl::StrCat("expected an 8-byte number, found ", s.size(), " bytes"));
  }
  uint64_t v = 0;
  for (unsigned char c : s) v = (v << 8) | c;
  return v;
}

namespace {

std::string Successor(std::string key) {
  // Keys always end in the agent's NUL separator and space byte or later bytes, so some byte
  // below 0xff exists.
  while (!key.empty() && static_cast<unsigned char>(key.back()) == 0xff) key.pop_back();
  if (!key.empty()) key.back() = static_cast<char>(static_cast<unsigned char>(key.back()) + 1);
  return key;
}

// Returns the iterator's status, for the caller to convert.
rocksdb::Status ScanIterator(const Kb& kb, rocksdb::Iterator* it, Space space,
                             absl::string_view prefix, const ScanFn& fn,
                             absl::string_view from = "") {
  const std::string start = kb.Key(space, absl::StrCat(prefix, from));
  const std::string end = kb.UpperBound(space, prefix);
  const size_t strip = kb.prefix_size() + prefix.size();
  for (it->Seek(start); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key();
    if (k.compare(end) >= 0) break;
    if (!fn(absl::string_view(k.data() + strip, k.size() - strip),
            absl::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  return it->status();
}

// The first key of `agent`'s namespace and the first after it.
std::pair<std::string, std::string> AgentRange(absl::string_view agent) {
  return {absl::StrCat(agent, absl::string_view("\0", 1)),
          absl::StrCat(agent, absl::string_view("\1", 1))};
}

absl::Status CheckAgentName(absl::string_view agent) {
  if (agent.empty() || agent.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent name '", agent, "' must be non-empty and contain no NUL byte"));
  }
  return absl::OkStatus();
}

}  // namespace

struct Txn::Rep {
  Rep() : batch(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}
  rocksdb::WriteBatchWithIndex batch;
  // Agents whose keys go at commit (DeleteAgent), and the save points set.
  std::vector<std::string> deleted_agents;
  int save_points = 0;
};

StoreImpl& Kb::impl() const { return *store_->impl_; }

std::string Kb::Key(Space space, absl::string_view key) const {
  std::string k;
  k.reserve(agent_.size() + 2 + key.size());
  k.append(agent_);
  k.push_back('\0');
  k.push_back(static_cast<char>(space));
  k.append(key.data(), key.size());
  return k;
}

std::string Kb::UpperBound(Space space, absl::string_view prefix) const {
  return Successor(Key(space, prefix));
}

absl::StatusOr<std::unique_ptr<Kb>> Kb::Open(Store* store, absl::string_view agent) {
  RETURN_IF_ERROR(CheckAgentName(agent));
  return std::unique_ptr<Kb>(new Kb(store, std::string(agent)));
}

absl::StatusOr<uint64_t> Kb::Commit(Txn& txn) {
  rocksdb::WriteBatch* batch = txn.rep_->batch.GetWriteBatch();
  if (!txn.rep_->deleted_agents.empty()) {
    // Appended to a copy, so that a failed write leaves the transaction as it was.
    rocksdb::WriteBatch with_deletes(*batch);
    for (const std::string& agent : txn.rep_->deleted_agents) {
      auto [begin, end] = AgentRange(agent);
      RETURN_IF_ERROR(impl().Convert(with_deletes.DeleteRange(begin, end), "delete agent"));
    }
    ASSIGN_OR_RETURN(uint64_t ticket, impl().Write(&with_deletes));
    txn.Clear();
    return ticket;
  }
  ASSIGN_OR_RETURN(uint64_t ticket, impl().Write(batch));
  txn.Clear();
  return ticket;
}

absl::StatusOr<std::optional<std::string>> Kb::Get(Space space, absl::string_view key) const {
  std::string value;
  rocksdb::ReadOptions ro;
  rocksdb::Status s = impl().db()->Get(ro, Key(space, key), &value);
  if (s.IsNotFound()) return std::nullopt;
  RETURN_IF_ERROR(impl().Convert(s, "read"));
  return value;
}

absl::Status Kb::Scan(Space space, absl::string_view prefix, const ScanFn& fn) const {
  return ScanFrom(space, prefix, "", fn);
}

absl::Status Kb::ScanFrom(Space space, absl::string_view prefix, absl::string_view from,
                          const ScanFn& fn) const {
  rocksdb::ReadOptions ro;
  const std::string upper = UpperBound(space, prefix);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(impl().db()->NewIterator(ro));
  return impl().Convert(ScanIterator(*this, it.get(), space, prefix, fn, from), "scan");
}

Txn::Txn(Kb* kb) : kb_(kb), rep_(std::make_unique<Rep>()) {}
Txn::~Txn() = default;

void Txn::Put(Space space, absl::string_view key, absl::string_view value) {
  // WriteBatchWithIndex only fails on a column family mismatch, which cannot happen here.
  rep_->batch.Put(kb_->Key(space, key), rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
}

void Txn::Delete(Space space, absl::string_view key) {
  rep_->batch.Delete(kb_->Key(space, key)).PermitUncheckedError();
}

void Txn::PutUnindexed(Space space, absl::string_view key, absl::string_view value) {
  rep_->batch.GetWriteBatch()
      ->Put(kb_->Key(space, key), rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
}

void Txn::DeleteUnindexed(Space space, absl::string_view key) {
  rep_->batch.GetWriteBatch()->Delete(kb_->Key(space, key)).PermitUncheckedError();
}

absl::Status Txn::DeletePrefix(Space space, absl::string_view prefix) {
  std::vector<std::string> keys;
  RETURN_IF_ERROR(Scan(space, prefix, [&](absl::string_view key, absl::string_view) {
    keys.emplace_back(key);
    return true;
  }));
  for (const auto& k : keys) Delete(space, absl::StrCat(prefix, k));
  return absl::OkStatus();
}

absl::Status Txn::DeleteAgent(absl::string_view agent) {
  RETURN_IF_ERROR(CheckAgentName(agent));
  if (agent == kb_->agent()) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent ", agent, ": a transaction cannot delete its own knowledge base"));
  }
  if (rep_->save_points > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("agent ", agent, ": keys are not deleted while a save point is set"));
  }
  rep_->deleted_agents.emplace_back(agent);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> Txn::Get(Space space, absl::string_view key) const {
  std::string value;
  rocksdb::ReadOptions ro;
  // GetFromBatchAndDB is not const in RocksDB's API but does not modify the batch.
  rocksdb::Status s =
      rep_->batch.GetFromBatchAndDB(kb_->impl().db(), ro, kb_->Key(space, key), &value);
  if (s.IsNotFound()) return std::nullopt;
  RETURN_IF_ERROR(kb_->impl().Convert(s, "read"));
  return value;
}

absl::Status Txn::Scan(Space space, absl::string_view prefix, const ScanFn& fn) const {
  rocksdb::ReadOptions ro;
  rocksdb::DB* db = kb_->impl().db();
  std::unique_ptr<rocksdb::Iterator> it(
      rep_->batch.NewIteratorWithBase(db->DefaultColumnFamily(), db->NewIterator(ro)));
  return kb_->impl().Convert(ScanIterator(*kb_, it.get(), space, prefix, fn), "scan");
}

void Txn::SetSavePoint() {
  rep_->batch.SetSavePoint();
  ++rep_->save_points;
}

absl::Status Txn::RollbackToSavePoint() {
  RETURN_IF_ERROR(kb_->impl().Convert(rep_->batch.RollbackToSavePoint(), "rollback to save point"));
  --rep_->save_points;
  return absl::OkStatus();
}

absl::Status Txn::PopSavePoint() {
  RETURN_IF_ERROR(kb_->impl().Convert(rep_->batch.PopSavePoint(), "pop save point"));
  --rep_->save_points;
  return absl::OkStatus();
}

void Txn::Clear() {
  rep_->batch.Clear();
  rep_->deleted_agents.clear();
  rep_->save_points = 0;
}

size_t Txn::write_count() const {
  return rep_->batch.GetWriteBatch()->Count() + rep_->deleted_agents.size();
}

}  // namespace parley::kb

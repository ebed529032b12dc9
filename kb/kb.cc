#include "kb/kb.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rocksdb/comparator.h"

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

absl::Status ScanIterator(const Kb& kb, rocksdb::Iterator* it, Space space,
                          absl::string_view prefix, const ScanFn& fn, absl::string_view from = "") {
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
  return kb.store()->Convert(it->status(), "scan");
}

}  // namespace

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
  if (agent.empty() || agent.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent name '", agent, "' must be non-empty and contain no NUL byte"));
  }
  return std::unique_ptr<Kb>(new Kb(store, std::string(agent)));
}

absl::StatusOr<uint64_t> Kb::Commit(Txn& txn) {
  ASSIGN_OR_RETURN(uint64_t ticket, store_->Write(txn.batch()));
  txn.Clear();
  return ticket;
}

absl::StatusOr<std::optional<std::string>> Kb::Get(Space space, absl::string_view key) const {
  std::string value;
  rocksdb::ReadOptions ro;
  rocksdb::Status s = store_->db()->Get(ro, Key(space, key), &value);
  if (s.IsNotFound()) return std::nullopt;
  RETURN_IF_ERROR(store_->Convert(s, "read"));
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
  std::unique_ptr<rocksdb::Iterator> it(store_->db()->NewIterator(ro));
  return ScanIterator(*this, it.get(), space, prefix, fn, from);
}

Txn::Txn(Kb* kb) : kb_(kb), batch_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}

void Txn::Put(Space space, absl::string_view key, absl::string_view value) {
  // WriteBatchWithIndex only fails on a column family mismatch, which cannot happen here.
  batch_.Put(kb_->Key(space, key), rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
}

void Txn::Delete(Space space, absl::string_view key) {
  batch_.Delete(kb_->Key(space, key)).PermitUncheckedError();
}

void Txn::PutUnindexed(Space space, absl::string_view key, absl::string_view value) {
  batch_.GetWriteBatch()
      ->Put(kb_->Key(space, key), rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
}

void Txn::DeleteUnindexed(Space space, absl::string_view key) {
  batch_.GetWriteBatch()->Delete(kb_->Key(space, key)).PermitUncheckedError();
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

absl::StatusOr<std::optional<std::string>> Txn::Get(Space space, absl::string_view key) const {
  std::string value;
  rocksdb::ReadOptions ro;
  // GetFromBatchAndDB is not const in RocksDB's API but does not modify the batch.
  auto& batch = const_cast<rocksdb::WriteBatchWithIndex&>(batch_);
  rocksdb::Status s = batch.GetFromBatchAndDB(kb_->store()->db(), ro, kb_->Key(space, key), &value);
  if (s.IsNotFound()) return std::nullopt;
  RETURN_IF_ERROR(kb_->store()->Convert(s, "read"));
  return value;
}

absl::Status Txn::Scan(Space space, absl::string_view prefix, const ScanFn& fn) const {
  rocksdb::ReadOptions ro;
  auto& batch = const_cast<rocksdb::WriteBatchWithIndex&>(batch_);
  std::unique_ptr<rocksdb::Iterator> it(batch.NewIteratorWithBase(
      kb_->store()->db()->DefaultColumnFamily(), kb_->store()->db()->NewIterator(ro)));
  return ScanIterator(*kb_, it.get(), space, prefix, fn);
}

absl::Status Txn::RollbackToSavePoint() {
  return kb_->store()->Convert(batch_.RollbackToSavePoint(), "rollback to save point");
}

absl::Status Txn::PopSavePoint() {
  return kb_->store()->Convert(batch_.PopSavePoint(), "pop save point");
}

}  // namespace parley::kb

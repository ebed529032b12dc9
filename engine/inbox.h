#pragma once

// The agent's durable FIFO of events. Ids are assigned in order as events are staged; the head
// is the next event to run, and the run that applies it removes it in its own commit. Internal to
// engine/.

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kb/kb.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

class Inbox {
 public:
  // Reads the next id and finds the head. Forgets anything staged.
  absl::Status Load(const kb::Kb& kb);

  // Puts `event` at the tail in `txn`, giving it the next id. Staged events count once
  // Committed() says their transaction committed; Discard() gives their ids back.
  void Stage(kb::Txn& txn, v1::Event& event);
  void Committed() {
    depth_ += staged_;
    staged_ = 0;
  }
  void Discard() {
    next_id_ -= staged_;
    staged_ = 0;
  }

  // Commits `txn`, then Committed() or, when the commit failed, Discard().
  absl::StatusOr<uint64_t> Commit(kb::Kb& kb, kb::Txn& txn);

  // Replaces the stored copy of `event` (queued, same id) in `txn`.
  static void StageRewrite(kb::Txn& txn, const v1::Event& event);
  // Removes the head event `id` in `txn`; Pop() once that committed.
  static void StageRemove(kb::Txn& txn, uint64_t id);
  void Pop() {
    ++head_;
    --depth_;
  }

  uint64_t head() const { return head_; }
  size_t depth() const { return depth_; }

 private:
  uint64_t next_id_ = 1;
  // The inbox holds the events [head_, next_id_ - staged_).
  uint64_t head_ = 1;
  size_t depth_ = 0;
  size_t staged_ = 0;
};

}  // namespace parley::engine

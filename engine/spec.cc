#include "engine/spec.h"

namespace parley::engine {
namespace {

class FunctionAction : public Action {
 public:
  explicit FunctionAction(std::function<absl::Status(RunContext&)> fn) : fn_(std::move(fn)) {}
  absl::Status Run(RunContext& ctx) override { return fn_(ctx); }

 private:
  std::function<absl::Status(RunContext&)> fn_;
};

}  // namespace

std::unique_ptr<Action> MakeAction(std::function<absl::Status(RunContext&)> fn) {
  return std::make_unique<FunctionAction>(std::move(fn));
}

}  // namespace parley::engine

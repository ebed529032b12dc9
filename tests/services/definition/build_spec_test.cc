// From a definition to an engine spec: what BuildSpec takes from the definition and the registry
// (services/definition/build_spec.h).

#include "services/definition/build_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "services/backends/builtin/builtin_action.h"
#include "services/backends/registry.h"
#include "tests/services/definition/definition_test_util.h"

namespace parley::services {
namespace {

using ::testing::ElementsAre;
using testing::EveryKindTest;
using ::testing::IsEmpty;
using testing::kEveryKind;
using testing::LineOf;

TEST_F(EveryKindTest, BuildSpecTakesRequiredKeysFromTheRemoteSide) {
  auto def = LoadService(kEveryKind);
  ASSERT_TRUE(def.ok()) << def.status();
  // A registry with the builtin kind only refuses the others, naming what it runs.
  BackendRegistry builtin;
  builtin.Add(ActionKind::kBuiltin, MakeBuiltinAction);
  auto refused = BuildSpec(*def, "web/0", builtin);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsUnimplemented(refused.status())) << refused.status();
  EXPECT_EQ(refused.status().message(),
            absl::StrCat(Path("svc/service.yaml"), ":", LineOf(kEveryKind, "kind: exec") - 1,
                         ": handler 'install': action kind 'exec' has no backend here (this "
                         "one runs builtin)"));

  // A factory that makes every kind: the spec carries endpoints, handlers and names.
  class AnyKind : public ActionFactory {
   public:
    absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition&,
                                                         const HandlerDef& h) override {
      kinds.push_back(std::string(ActionKindName(h.action.kind())));
      return engine::MakeAction([](engine::RunContext&) { return absl::OkStatus(); });
    }
    std::vector<std::string> kinds;
  } any;
  auto spec = BuildSpec(*def, "web/3", any);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(any.kinds, ElementsAre("exec", "ansible", "container", "http", "builtin"));
  EXPECT_EQ(spec->service, "web");
  EXPECT_EQ(spec->unit, "web/3");
  ASSERT_EQ(spec->endpoints.size(), 3u);
  EXPECT_EQ(spec->endpoints[0].name, "website");
  EXPECT_THAT(spec->endpoints[0].required_keys, IsEmpty());  // requirers publish nothing
  EXPECT_EQ(spec->endpoints[1].name, "db");
  EXPECT_THAT(spec->endpoints[1].required_keys, ElementsAre("host", "port", "password"));
  EXPECT_THAT(spec->endpoints[2].required_keys, ElementsAre("address"));
  ASSERT_EQ(spec->handlers.size(), 5u);
  EXPECT_EQ(spec->handlers[1].name, "configure");
  EXPECT_THAT(spec->handlers[1].when_not, ElementsAre("configured"));

  EXPECT_FALSE(BuildSpec(*def, "web", any).ok());
  EXPECT_FALSE(BuildSpec(*def, "Web/0", any).ok());
  EXPECT_FALSE(BuildSpec(*def, "web/x", any).ok());
}

}  // namespace
}  // namespace parley::services

// engine::CheckConfig is the one check of a config value: the agent (SetConfig, initial config),
// the host (a recipe's config, before it is recorded) and the CLI call it.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "engine/spec.h"

namespace parley::engine {
namespace {

using ::testing::HasSubstr;

ServiceSpec Declared() {
  ServiceSpec s;
  s.service = "app";
  s.unit = "app/0";
  s.declares_config = true;
  s.config_options.push_back({"port", [](absl::string_view v) {
                                int n = 0;
                                return absl::SimpleAtoi(v, &n)
                                           ? absl::OkStatus()
                                           : absl::InvalidArgumentError("port must be a number");
                              }});
  s.config_options.push_back({"greeting", nullptr});
  return s;
}

TEST(CheckConfigTest, UnknownKeyNamesTheServiceAndItsOptions) {
  absl::Status s = CheckConfig(Declared(), "nope", "1");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(s.message(), HasSubstr("service app has no config option 'nope' (it has: port, "
                                     "greeting)"));
}

TEST(CheckConfigTest, ValueRefusedByTheOptionsCheckNamesTheService) {
  absl::Status s = CheckConfig(Declared(), "port", "eighty");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_EQ(s.message(), "service app: port must be a number");
  EXPECT_TRUE(CheckConfig(Declared(), "port", "80").ok());
}

TEST(CheckConfigTest, UnsetAndUncheckedAndUndeclaredAreAccepted) {
  EXPECT_TRUE(CheckConfig(Declared(), "port", "").ok());
  EXPECT_TRUE(CheckConfig(Declared(), "greeting", "anything").ok());
  ServiceSpec open;
  open.service = "free";
  EXPECT_TRUE(CheckConfig(open, "whatever", "x").ok());
}

}  // namespace
}  // namespace parley::engine

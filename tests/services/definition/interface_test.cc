// Relation data checked against an interface schema (services/definition/interface.h).

#include "services/definition/interface.h"

#include <gtest/gtest.h>

namespace parley::services {
namespace {

TEST(RelationDataTest, ValidatesKeysAndTypesPerSide) {
  InterfaceSchema s;
  s.name = "db";
  s.provider.keys = {{"host", ValueType::kString, true, "", 1},
                     {"port", ValueType::kInt, true, "", 2},
                     {"ratio", ValueType::kFloat, false, "", 3},
                     {"tls", ValueType::kBool, false, "", 4}};
  s.requirer.keys = {{"user", ValueType::kString, false, "", 5}};
  EXPECT_TRUE(ValidateRelationData(s, "host", "").ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "6379").ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "-1").ok());
  EXPECT_TRUE(ValidateRelationData(s, "ratio", "0.25").ok());
  EXPECT_TRUE(ValidateRelationData(s, "ratio", "1e3").ok());
  EXPECT_TRUE(ValidateRelationData(s, "tls", "false").ok());
  EXPECT_TRUE(ValidateRelationData(s, "user", "app", engine::Role::kRequires).ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "1", engine::Role::kPeers).ok());

  EXPECT_EQ(ValidateRelationData(s, "port", "63 79").message(),
            "interface 'db': key 'port': expected an int, got '63 79'");
  EXPECT_FALSE(ValidateRelationData(s, "port", " 6379").ok());
  EXPECT_FALSE(ValidateRelationData(s, "port", "6379.5").ok());
  EXPECT_FALSE(ValidateRelationData(s, "port", "").ok());
  EXPECT_FALSE(ValidateRelationData(s, "ratio", "nan").ok());
  EXPECT_FALSE(ValidateRelationData(s, "ratio", "fast").ok());
  EXPECT_EQ(ValidateRelationData(s, "tls", "yes").message(),
            "interface 'db': key 'tls': expected a bool (true or false), got 'yes'");
  EXPECT_EQ(ValidateRelationData(s, "user", "app").message(),
            "interface 'db': the providing side publishes no key 'user' (keys: host, port, "
            "ratio, tls)");
  EXPECT_EQ(ValidateRelationData(s, "host", "h", engine::Role::kRequires).message(),
            "interface 'db': the requiring side publishes no key 'host' (keys: user)");
}

}  // namespace
}  // namespace parley::services

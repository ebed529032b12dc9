// Reading model.yaml (docs/service-definitions.md): services, relations, hosts and config are
// read with the definitions they name, and bad models are refused naming file, line and field.

#include "services/definition/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/services/definition/definition_test_util.h"

namespace parley::services {
namespace {

using testing::DefinitionTest;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kHttp;
using testing::kRedis;
using testing::LineOf;
using ::testing::Pair;
using ::testing::StartsWith;

constexpr char kWebService[] = R"(name: webapp
requires: {db: redis}
provides: {website: http}
peers: {cluster: http}
config:
  port: {type: int, default: 8080}
  debug: {type: bool, default: false}
)";

constexpr char kRedisService[] = R"(name: redis
provides: {db: redis}
requires: {web: http}
config:
  password: {type: string}
)";

class ModelTest : public DefinitionTest {
 protected:
  void SetUp() override {
    DefinitionTest::SetUp();
    Write("defs/webapp/service.yaml", kWebService);
    Write("defs/redis/service.yaml", kRedisService);
  }

  // Writes `yaml` as stack/model.yaml, loads it, expects it refused and returns the message.
  std::string ModelError(const std::string& yaml) {
    auto model = LoadModel(Write("stack/model.yaml", yaml));
    EXPECT_FALSE(model.ok()) << "accepted:\n" << yaml;
    return model.ok() ? "" : std::string(model.status().message());
  }

  std::string ModelAt(const std::string& yaml, const std::string& needle,
                      const std::string& field) {
    return absl::StrCat(Path("stack/model.yaml"), ":", LineOf(yaml, needle), ": ", field,
                        field.empty() ? "" : ": ");
  }
};

constexpr char kModel[] = R"(description: A web app and its database.
interfaces: ../shared
services:
  web:
    definition: ../defs/webapp
    units: 3
    config: {port: 9000, debug: true}
  cache:
    definition: ../defs/redis
    config:
      password: 1234
relations:
  - [web:db, cache:db]
  - [cache:web, web:website]
)";

TEST_F(ModelTest, LoadsServicesRelationsAndConfig) {
  auto model = LoadModel(Write("stack/model.yaml", kModel));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->description, "A web app and its database.");
  EXPECT_EQ(model->interfaces_dir, Path("shared"));
  ASSERT_EQ(model->services.size(), 2u);
  const ModelService& web = model->services[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.definition_path, "../defs/webapp");
  EXPECT_EQ(web.definition_dir, Path("defs/webapp"));
  EXPECT_EQ(web.definition.name, "webapp");
  EXPECT_EQ(web.units, 3);
  EXPECT_THAT(web.config, ElementsAre(Pair("debug", "true"), Pair("port", "9000")));
  EXPECT_EQ(model->services[1].units, 1);
  EXPECT_THAT(model->services[1].config, ElementsAre(Pair("password", "1234")));
  ASSERT_EQ(model->relations.size(), 2u);
  EXPECT_EQ(model->relations[0].a.service, "web");
  EXPECT_EQ(model->relations[0].a.endpoint, "db");
  EXPECT_EQ(model->relations[0].b.service, "cache");
  EXPECT_EQ(model->relations[1].line, LineOf(kModel, "[cache:web"));
  EXPECT_EQ(model->FindService("cache")->definition.name, "redis");
}

TEST_F(ModelTest, BadModelsAreRefused) {
  const std::string head =
      "interfaces: ../shared\nservices:\n  web: {definition: ../defs/webapp}\n"
      "  cache: {definition: ../defs/redis}\nrelations:\n";

  std::string yaml = head + "  - [web:db, redsi:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "redsi", "relations[0][1]") +
                                  "service 'redsi' is not in this model (services: web, cache)");

  yaml = head + "  - [web:dbx, cache:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "dbx", "relations[0][0]") +
                                  "service 'web' (definition 'webapp') has no endpoint 'dbx' "
                                  "(endpoints: website, db, cluster)");

  yaml = head + "  - [web:db, cache:web]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "cache:web", "relations[0]") +
                                  "web:db has interface 'redis' but cache:web has interface "
                                  "'http'");

  yaml = head + "  - [web:website, web:cluster]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "web:cluster", "relations[0]") +
                                  "web:website (provides) cannot relate to web:cluster (peers): "
                                  "a relation joins provides to requires, or peers to peers");

  yaml = head + "  - [cache:web, web:website]\n  - [web:website, cache:web]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "[web:website, cache:web]", "relations[1]") +
                                  "the same relation as relations[0]");

  yaml = head + "  - [web.db, cache:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "web.db", "relations[0][0]") +
                                  "expected '<service>:<endpoint>', got 'web.db'");

  yaml = head + "  - [web:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "[web:db]", "relations[0]") +
                                  "expected a pair [<service>:<endpoint>, <service>:<endpoint>], "
                                  "got a list");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    units: 0\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "units", "services.web.units") +
                                  "expected an int from 1 to 100000, got 0");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    units: two\n";
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "units", "services.web.units") + "expected an int, got 'two'");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    config: {prot: 1}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "prot", "services.web.config.prot") +
                                  "'prot' is not a config option of definition 'webapp' "
                                  "(options: port, debug)");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    config: {debug: maybe}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "debug", "services.web.config.debug") +
                                  "expected a bool (true or false), got 'maybe'");

  yaml = "interfaces: ../shared\nservices:\n  web:\n    definitoin: ../defs/webapp\n";
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "definitoin", "services.web") +
                "unknown key 'definitoin' (expected definition, units, config, host)");

  yaml = "interfaces: ../shared\nservices:\n  web: {units: 2}\n";
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "web:", "services.web") + "missing required field 'definition'");

  yaml = "interfaces: ../shared\nservices:\n  Web: {definition: ../defs/webapp}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "Web:", "services.Web") +
                                  "service name 'Web' must be lowercase letters, digits and '-', "
                                  "starting with a letter");

  yaml = "interfaces: ../shared\nservicse: {}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "servicse", "") +
                                  "unknown key 'servicse' (expected description, interfaces, "
                                  "coordinator, hosts, services, relations)");

  // coordinator: the etcd members, each a host:port.
  yaml = "coordinator:\n  etcd: [127.0.0.1:2379, nowhere]\nservices: {}\n";
  EXPECT_THAT(
      ModelError(yaml),
      HasSubstr("model.yaml:2: coordinator.etcd[1]: expected <host>:<port> of an etcd member, "
                "got 'nowhere'"));
  yaml = "coordinator:\n  etcd: []\nservices: {}\n";
  EXPECT_THAT(ModelError(yaml),
              HasSubstr("model.yaml:2: coordinator.etcd: expected at least one etcd member"));
  yaml = "coordinator: {}\nservices: {}\n";
  EXPECT_THAT(ModelError(yaml), HasSubstr("etcd"));
}

TEST_F(ModelTest, HostsPlaceServicesOnOtherParleyds) {
  const std::string ok =
      "interfaces: ../shared\nhosts:\n  east: {address: '10.77.0.1:7000', model_root: /srv/m}\n"
      "services:\n  web: {definition: ../defs/webapp, host: east}\n"
      "  cache: {definition: ../defs/redis}\n";
  auto model = LoadModel(Write("stack/model.yaml", ok));
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->hosts.size(), 1u);
  EXPECT_EQ(model->hosts[0].name, "east");
  EXPECT_EQ(model->hosts[0].address, "10.77.0.1:7000");
  EXPECT_EQ(model->hosts[0].model_root, "/srv/m");
  EXPECT_EQ(model->FindService("web")->host, "east");
  EXPECT_EQ(model->FindService("cache")->host, "local");

  std::string yaml =
      "hosts:\n  east: {address: '10.77.0.1'}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "10.77.0.1", "hosts.east.address") +
                                  "expected <host>:<port> of a parleyd, got '10.77.0.1'");
  yaml =
      "hosts:\n  local: {address: '10.0.0.1:1'}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_THAT(ModelError(yaml), HasSubstr("'local' is the parleyd `parley up` starts"));
  yaml =
      "hosts:\n  east: {address: '10.0.0.1:1', model_root: rel}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_THAT(ModelError(yaml), HasSubstr("expected an absolute path, got 'rel'"));
  yaml =
      "hosts:\n  east: {address: '10.0.0.1:1'}\nservices:\n"
      "  web: {definition: ../defs/webapp, host: west}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "west", "services.web.host") +
                                  "host 'west' is not declared under hosts (local, east)");
}

TEST_F(ModelTest, DefinitionErrorsNameBothFiles) {
  Write("defs/broken/service.yaml", "name: broken\nrequires: {db: mysql}\n");
  const std::string yaml = "interfaces: ../shared\nservices:\n  b: {definition: ../defs/broken}\n";
  const std::string message = ModelError(yaml);
  EXPECT_THAT(message, StartsWith(absl::StrCat(Path("defs/broken/service.yaml"),
                                               ":2: requires.db: interface 'mysql' is not "
                                               "defined")));
  EXPECT_THAT(message, HasSubstr(absl::StrCat("(the definition of services.b.definition at ",
                                              Path("stack/model.yaml"), ":3)")));
}

TEST_F(ModelTest, InterfacesOfBothSidesMustBeTheSameContract) {
  // The redis definition carries its own, different, http interface.
  Write("defs/redis/interfaces/http.yaml", "required: {host: string, port: string}\n");
  const std::string yaml =
      "services:\n  web: {definition: ../defs/webapp}\n  cache: {definition: ../defs/redis}\n"
      "relations:\n  - [cache:web, web:website]\n";
  Write("defs/webapp/interfaces/http.yaml", kHttp);
  Write("defs/webapp/interfaces/redis.yaml", kRedis);
  Write("defs/redis/interfaces/redis.yaml", kRedis);
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "[cache:web", "relations[0]") +
                absl::StrCat("cache:web and web:website both use interface 'http' but its schemas "
                             "differ (",
                             Path("defs/redis/interfaces/http.yaml"), " and ",
                             Path("defs/webapp/interfaces/http.yaml"), ")"));
}

}  // namespace
}  // namespace parley::services

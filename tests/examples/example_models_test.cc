// The example models (examples/*/model*.yaml) load: every definition, interface, config value and
// relation in them is valid, and they say what their READMEs say. Running them is the job of the
// end-to-end scripts beside this file (ctest -L e2e).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "services/definition/definition.h"

namespace parley::services {
namespace {

using ::testing::ElementsAre;

const std::string kExamples = std::string(PARLEY_SOURCE_DIR) + "/examples";

std::vector<std::string> Services(const Model& model) {
  std::vector<std::string> out;
  for (const ModelService& s : model.services) {
    out.push_back(s.name + "=" + s.definition.name + "x" + std::to_string(s.units));
  }
  return out;
}

TEST(ExampleModelsTest, Webstack) {
  auto model = LoadModel(kExamples + "/webstack/model.yaml");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(Services(*model), ElementsAre("redis=redisx1", "app=appx2", "balancer=balancerx1"));
  EXPECT_EQ(model->relations.size(), 2);
}

TEST(ExampleModelsTest, WebstackWithAnsibleRedisChangesOnlyTheRedisDefinition) {
  auto shell = LoadModel(kExamples + "/webstack/model.yaml");
  auto ansible = LoadModel(kExamples + "/webstack/model-ansible.yaml");
  ASSERT_TRUE(shell.ok()) << shell.status();
  ASSERT_TRUE(ansible.ok()) << ansible.status();
  EXPECT_THAT(Services(*ansible),
              ElementsAre("redis=redis-ansiblex1", "app=appx2", "balancer=balancerx1"));
  for (const ModelService& s : shell->services) {
    const ModelService* other = ansible->FindService(s.name);
    ASSERT_NE(other, nullptr) << s.name;
    EXPECT_EQ(other->config, s.config) << s.name;
    if (s.name != "redis") {
      EXPECT_EQ(other->definition_dir, s.definition_dir) << s.name;
    }
  }
  // Interchangeable: the same endpoint on the same interface, and the same config options.
  const ServiceDefinition& a = shell->FindService("redis")->definition;
  const ServiceDefinition& b = ansible->FindService("redis")->definition;
  ASSERT_EQ(a.endpoints.size(), b.endpoints.size());
  for (size_t i = 0; i < a.endpoints.size(); ++i) {
    EXPECT_EQ(a.endpoints[i].name, b.endpoints[i].name);
    EXPECT_EQ(a.endpoints[i].interface, b.endpoints[i].interface);
  }
}

TEST(ExampleModelsTest, Zookeeper) {
  auto model = LoadModel(kExamples + "/zookeeper/model.yaml");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(Services(*model), ElementsAre("zookeeper=zookeeperx3"));
  ASSERT_EQ(model->relations.size(), 1);
  EXPECT_EQ(model->relations[0].a.endpoint, "cluster");
}

TEST(ExampleModelsTest, Postgres) {
  auto model = LoadModel(kExamples + "/postgres/model.yaml");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(Services(*model), ElementsAre("postgres=postgresx3"));
  ASSERT_EQ(model->relations.size(), 1);
  EXPECT_EQ(model->relations[0].a.endpoint, "cluster");
}

}  // namespace
}  // namespace parley::services

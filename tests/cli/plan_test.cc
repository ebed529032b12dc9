// The plan of `parley up` (tools/cli/model/plan.h): what changes, in which order, computed from
// the record and the model alone — no parleyd, no files.

#include "tools/cli/model/plan.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace parley::cli {
namespace {

using Kind = PlanStep::Kind;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

services::EndpointDef Endpoint(std::string name, engine::Role role, std::string interface) {
  services::EndpointDef ep;
  ep.name = std::move(name);
  ep.role = role;
  ep.interface = std::move(interface);
  return ep;
}

// `web` (provides website: http, peers cluster: web-peers) and `lb` (requires backends: http).
services::ModelService Web(int units, std::map<std::string, std::string> config = {}) {
  services::ModelService m;
  m.name = "web";
  m.definition_dir = "/defs/web";
  m.definition.name = "web";
  m.definition.endpoints = {Endpoint("website", engine::Role::kProvides, "http"),
                            Endpoint("cluster", engine::Role::kPeers, "web-peers")};
  m.units = units;
  m.config = std::move(config);
  return m;
}

services::ModelService Lb(int units, std::string dir = "/defs/lb") {
  services::ModelService m;
  m.name = "lb";
  m.definition_dir = std::move(dir);
  m.definition.name = "lb";
  m.definition.endpoints = {Endpoint("backends", engine::Role::kRequires, "http")};
  m.units = units;
  return m;
}

services::ModelRelation WebLb() { return {{"web", "website"}, {"lb", "backends"}, 1}; }

v1::ModelState State(const std::string& text) {
  v1::ModelState state;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &state)) << text;
  return state;
}

// The record after the model of Web(2, port 9000), Lb(1) and WebLb() was applied.
constexpr char kApplied[] = R"pb(
  model_file: "/m/model.yaml"
  host { name: "local" address: "127.0.0.1:7000" }
  services {
    name: "web"
    definition_dir: "/defs/web"
    definition_name: "web"
    host: "local"
    config { key: "port" value: "9000" }
    units { name: "web/0" address: "127.0.0.1:7000" }
    units { name: "web/1" address: "127.0.0.1:7000" }
    next_unit: 2
  }
  services {
    name: "lb"
    definition_dir: "/defs/lb"
    definition_name: "lb"
    host: "local"
    units { name: "lb/0" address: "127.0.0.1:7000" }
    next_unit: 1
  }
  relations {
    id: "web:cluster#1"
    a_service: "web"
    a_endpoint: "cluster"
    b_service: "web"
    b_endpoint: "cluster"
    interface: "web-peers"
  }
  relations {
    id: "web:website-lb:backends#2"
    a_service: "web"
    a_endpoint: "website"
    b_service: "lb"
    b_endpoint: "backends"
    interface: "http"
  }
  next_relation: 2
)pb";

services::Model TheModel(std::vector<services::ModelService> services,
                         std::vector<services::ModelRelation> relations) {
  services::Model model;
  model.file = "/m/model.yaml";
  model.services = std::move(services);
  model.relations = std::move(relations);
  return model;
}

std::vector<Kind> Kinds(const ModelPlan& plan) {
  std::vector<Kind> out;
  for (const PlanStep& s : plan.steps) out.push_back(s.kind);
  return out;
}

TEST(PlanTest, ANewModelIsRecordedConfiguredScaledAndRelatedInOrder) {
  const ModelPlan plan =
      Plan(v1::ModelState(), TheModel({Web(2, {{"port", "9000"}}), Lb(1)}, {WebLb()}));
  EXPECT_THAT(Kinds(plan), ElementsAre(Kind::kAddService, Kind::kConfigure, Kind::kAddUnits,
                                       Kind::kAddRelation, Kind::kAddService, Kind::kAddUnits,
                                       Kind::kAddRelation, Kind::kRelateUnits, Kind::kRelateUnits));
  const auto& s = plan.steps;
  EXPECT_EQ(s[0].service, "web");
  EXPECT_EQ(s[0].definition_dir, "/defs/web");
  EXPECT_EQ(s[0].host, "local");
  // Config before units, so that new units start with it.
  EXPECT_THAT(s[1].set, ElementsAre(Pair("port", "9000")));
  EXPECT_THAT(s[2].units, ElementsAre("web/0", "web/1"));
  // The peer endpoint's relation, implicit in the model.
  EXPECT_EQ(s[3].a.endpoint, "cluster");
  EXPECT_EQ(s[3].b.endpoint, "cluster");
  EXPECT_EQ(s[3].interface, "web-peers");
  EXPECT_THAT(s[5].units, ElementsAre("lb/0"));
  EXPECT_EQ(s[6].interface, "http");
  // Peers pair each two units once; a relation pairs every unit of one end with the other's.
  EXPECT_THAT(s[7].new_pairs, ElementsAre(Pair("web/0", "web/1")));
  EXPECT_THAT(s[8].new_pairs, ElementsAre(Pair("web/0", "lb/0"), Pair("web/1", "lb/0")));
  EXPECT_EQ(plan.changes(), 9u);
  EXPECT_THAT(plan.service_order, ElementsAre("web", "lb"));
  EXPECT_EQ(FormatPlan(plan),
            "add service web (definition /defs/web, host local)\n"
            "configure web: port=9000\n"
            "add units web/0, web/1\n"
            "add relation web:cluster (peers) (interface web-peers)\n"
            "add service lb (definition /defs/lb, host local)\n"
            "add unit lb/0\n"
            "add relation web:website - lb:backends (interface http)\n"
            "relate web:cluster (peers): web/0 - web/1\n"
            "relate web:website - lb:backends: web/0 - lb/0, web/1 - lb/0\n");
}

TEST(PlanTest, TheModelAsAppliedChangesNothing) {
  // The model's relation written the other way round is the same relation.
  const ModelPlan plan = Plan(
      State(kApplied),
      TheModel({Web(2, {{"port", "9000"}}), Lb(1)}, {{{"lb", "backends"}, {"web", "website"}, 1}}));
  // Relating again is idempotent: both relations are related once more, with no new pair.
  EXPECT_THAT(Kinds(plan), ElementsAre(Kind::kRelateUnits, Kind::kRelateUnits));
  EXPECT_THAT(plan.steps[0].new_pairs, IsEmpty());
  EXPECT_THAT(plan.steps[1].new_pairs, IsEmpty());
  EXPECT_EQ(plan.changes(), 0u);
  EXPECT_EQ(FormatPlan(plan), "nothing to change\n");
}

TEST(PlanTest, ConfigAndScaleChangeOnlyWhatDiffers) {
  v1::ModelState applied = State(kApplied);
  (*applied.mutable_services(0)->mutable_config())["greeting"] = "howdy";
  // web/1 was removed by hand and web/2 added: numbers are not reused.
  applied.mutable_services(0)->mutable_units(1)->set_name("web/2");
  applied.mutable_services(0)->set_next_unit(3);
  const ModelPlan plan = Plan(applied, TheModel({Web(4, {{"port", "9100"}}), Lb(0)}, {WebLb()}));
  EXPECT_THAT(Kinds(plan), ElementsAre(Kind::kConfigure, Kind::kAddUnits, Kind::kRemoveUnits,
                                       Kind::kRelateUnits, Kind::kRelateUnits));
  const auto& s = plan.steps;
  EXPECT_THAT(s[0].set, ElementsAre(Pair("port", "9100")));
  EXPECT_THAT(s[0].unset, ElementsAre("greeting"));
  EXPECT_THAT(s[0].config, ElementsAre(Pair("port", "9100")));
  EXPECT_THAT(s[1].units, ElementsAre("web/3", "web/4"));
  EXPECT_EQ(s[2].service, "lb");
  EXPECT_THAT(s[2].units, ElementsAre("lb/0"));
  // Only pairs with a new unit are new; the lb has none left.
  EXPECT_THAT(s[3].new_pairs,
              ElementsAre(Pair("web/0", "web/3"), Pair("web/0", "web/4"), Pair("web/2", "web/3"),
                          Pair("web/2", "web/4"), Pair("web/3", "web/4")));
  EXPECT_THAT(s[4].new_pairs, IsEmpty());
  EXPECT_EQ(FormatPlan(plan),
            "configure web: port=9100, reset greeting\n"
            "add units web/3, web/4\n"
            "remove unit lb/0\n"
            "relate web:cluster (peers): web/0 - web/3, web/0 - web/4, web/2 - web/3, "
            "web/2 - web/4, web/3 - web/4\n");
}

TEST(PlanTest, ScalingDownRemovesTheNewestUnitsFirst) {
  v1::ModelState applied = State(kApplied);
  applied.mutable_services(0)->add_units()->set_name("web/2");
  const ModelPlan plan = Plan(applied, TheModel({Web(1, {{"port", "9000"}}), Lb(1)}, {WebLb()}));
  ASSERT_EQ(plan.steps[0].kind, Kind::kRemoveUnits);
  EXPECT_THAT(plan.steps[0].units, ElementsAre("web/2", "web/1"));
  EXPECT_EQ(plan.changes(), 1u);
}

TEST(PlanTest, ServicesThatLeaveOrAreReplacedLoseRelationsThenUnitsThenRecords) {
  v1::ModelState applied = State(kApplied);
  applied.mutable_services(1)->add_units()->set_name("lb/1");
  applied.mutable_services(1)->set_next_unit(2);
  // A third service, `old`, related to web; the model drops it.
  v1::ServiceRecord* old = applied.add_services();
  old->set_name("old");
  old->set_definition_dir("/defs/old");
  old->set_host("local");
  old->add_units()->set_name("old/0");
  old->set_next_unit(1);
  v1::RelationRecordState* rel = applied.add_relations();
  rel->set_id("old:db-web:website#3");
  rel->set_a_service("old");
  rel->set_a_endpoint("db");
  rel->set_b_service("web");
  rel->set_b_endpoint("website");
  // The lb from another definition directory: replaced, with new unit numbers.
  const ModelPlan plan =
      Plan(applied, TheModel({Web(2, {{"port", "9000"}}), Lb(1, "/defs/lb2")}, {WebLb()}));
  EXPECT_THAT(Kinds(plan), ElementsAre(Kind::kUnrelate, Kind::kUnrelate, Kind::kRemoveUnits,
                                       Kind::kRemoveService, Kind::kRemoveUnits,
                                       Kind::kRemoveService, Kind::kAddService, Kind::kAddUnits,
                                       Kind::kAddRelation, Kind::kRelateUnits, Kind::kRelateUnits));
  const auto& s = plan.steps;
  EXPECT_EQ(s[0].relation_id, "web:website-lb:backends#2");
  EXPECT_EQ(s[1].relation_id, "old:db-web:website#3");
  EXPECT_THAT(s[2].units, ElementsAre("lb/1", "lb/0"));
  EXPECT_EQ(s[3].service, "lb");
  EXPECT_THAT(s[4].units, ElementsAre("old/0"));
  EXPECT_EQ(s[5].service, "old");
  EXPECT_EQ(s[6].definition_dir, "/defs/lb2");
  // The counter of the service that left: lb/0 and lb/1 are not reused.
  EXPECT_THAT(s[7].units, ElementsAre("lb/2"));
  EXPECT_THAT(s[9].new_pairs, IsEmpty());  // web's peers: unchanged
  EXPECT_THAT(s[10].new_pairs, ElementsAre(Pair("web/0", "lb/2"), Pair("web/1", "lb/2")));
  EXPECT_EQ(FormatPlan(plan),
            "unrelate web:website-lb:backends#2\n"
            "unrelate old:db-web:website#3\n"
            "remove units lb/1, lb/0\n"
            "remove service lb\n"
            "remove unit old/0\n"
            "remove service old\n"
            "add service lb (definition /defs/lb2, host local)\n"
            "add unit lb/2\n"
            "add relation web:website - lb:backends (interface http)\n"
            "relate web:website - lb:backends: web/0 - lb/2, web/1 - lb/2\n");
  EXPECT_THAT(plan.service_order, ElementsAre("web", "lb"));
}

TEST(PlanTest, AServiceMovedToAnotherHostIsReplacedAndItsPeerRelationMadeAgain) {
  services::ModelService web = Web(2, {{"port", "9000"}});
  web.host = "east";
  const ModelPlan plan = Plan(State(kApplied), TheModel({web, Lb(1)}, {WebLb()}));
  EXPECT_THAT(Kinds(plan), ElementsAre(Kind::kUnrelate, Kind::kUnrelate, Kind::kRemoveUnits,
                                       Kind::kRemoveService, Kind::kAddService, Kind::kConfigure,
                                       Kind::kAddUnits, Kind::kAddRelation, Kind::kAddRelation,
                                       Kind::kRelateUnits, Kind::kRelateUnits));
  EXPECT_EQ(plan.steps[4].host, "east");
  EXPECT_THAT(plan.steps[6].units, ElementsAre("web/2", "web/3"));
  EXPECT_EQ(plan.steps[7].a.endpoint, "cluster");
  EXPECT_THAT(plan.steps[9].new_pairs, ElementsAre(Pair("web/2", "web/3")));
  EXPECT_THAT(plan.steps[10].new_pairs, ElementsAre(Pair("web/2", "lb/0"), Pair("web/3", "lb/0")));
}

TEST(PlanTest, ARelationTheModelNoLongerListsIsDroppedAndAReturningServiceKeepsItsCounter) {
  v1::ModelState applied = State(kApplied);
  (*applied.mutable_next_units())["cache"] = 4;
  services::ModelService cache;
  cache.name = "cache";
  cache.definition_dir = "/defs/cache";
  cache.definition.name = "cache";
  cache.units = 1;
  const ModelPlan plan = Plan(applied, TheModel({Web(2, {{"port", "9000"}}), Lb(1), cache}, {}));
  EXPECT_THAT(Kinds(plan),
              ElementsAre(Kind::kUnrelate, Kind::kAddService, Kind::kAddUnits, Kind::kRelateUnits));
  EXPECT_EQ(plan.steps[0].relation_id, "web:website-lb:backends#2");
  EXPECT_THAT(plan.steps[2].units, ElementsAre("cache/4"));
  EXPECT_THAT(plan.steps[3].new_pairs, IsEmpty());
}

}  // namespace
}  // namespace parley::cli

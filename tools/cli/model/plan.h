#pragma once

// What `parley up MODEL` changes, as data: the difference between the model as applied (the
// model directory's record) and the model file, in the order it is applied (docs/cli.md, "How
// `up` applies a model"). Planning does no I/O, so a unit test checks it without a parleyd;
// applying a plan (apply.h) is a separate step, and `parley up --dry-run` only prints it.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "parley/v1/model.pb.h"
#include "services/definition/definition.h"

namespace parley::cli {

// One change. Which fields are set depends on the kind.
struct PlanStep {
  enum class Kind {
    // Drop the relation `relation_id`: every unit of both ends unrelates it (the other side sees
    // departed and broken), and the record forgets it.
    kUnrelate,
    // Remove `units` of `service`, in that order (newest first), as `parley remove-unit` does.
    kRemoveUnits,
    // Forget `service`, which left the model or is replaced; its unit counter is kept, so that a
    // service coming back under the name does not reuse its unit numbers.
    kRemoveService,
    // Record `service` with `definition_dir`, `definition_name` and `host`; it has no units yet.
    kAddService,
    // Make the config of `service` `config` on every unit: `set` changes, `unset` resets to the
    // definition's default (one config.changed per unit).
    kConfigure,
    // Add `units` (the names they get) to `service`, each starting with the service's config.
    kAddUnits,
    // Record a relation between the ends `a` and `b` (equal for a peer relation) of `interface`.
    kAddRelation,
    // Relate every unit pair of the relation between `a` and `b`. Relating is idempotent;
    // `new_pairs` are the pairs the record says are not related yet (a plan without other steps
    // and without new pairs changes nothing).
    kRelateUnits,
  };

  explicit PlanStep(Kind k) : kind(k) {}

  Kind kind;
  std::string service;
  std::vector<std::string> units;
  std::string relation_id;
  std::string definition_dir;
  std::string definition_name;
  std::string host;
  std::map<std::string, std::string> config;
  std::map<std::string, std::string> set;
  std::vector<std::string> unset;
  services::RelationEnd a;
  services::RelationEnd b;
  std::string interface;
  std::vector<std::pair<std::string, std::string>> new_pairs;

  // Whether applying the step changes anything (only kRelateUnits without new pairs does not).
  bool Changes() const { return kind != Kind::kRelateUnits || !new_pairs.empty(); }
};

struct ModelPlan {
  std::vector<PlanStep> steps;
  // The model's services in its order, which the record takes once the steps are applied.
  std::vector<std::string> service_order;

  // The steps that change something.
  size_t changes() const;
};

// The steps that make what runs (`applied`, the model directory's record; empty for a new model)
// match `model`. Every service's `definition_dir` in `model` must be absolute and resolved, as
// the record keeps them (AbsolutePath). In order:
//  1. relations that are not in the model, or touch a service that leaves or is replaced
//     (another definition directory or host), are dropped;
//  2. each service that leaves or is replaced loses its units (newest first) and its record;
//  3. each service of the model, in its order: recorded if new, configured (so that new units
//     start with the config), then scaled to its number of units (new units, or the newest
//     removed); its peer endpoints get their relation if they have none;
//  4. the model's relations that are not recorded are recorded;
//  5. every relation's unit pairs are related (new units included).
ModelPlan Plan(const v1::ModelState& applied, const services::Model& model);

// One line per step that changes something ("add units web/2, web/3"); "nothing to change" when
// none does.
std::string FormatPlan(const ModelPlan& plan);

// Whether the record's relation `r` joins the ends `a` and `b` (either way round).
bool SameEnds(const v1::RelationRecordState& r, const services::RelationEnd& a,
              const services::RelationEnd& b);

}  // namespace parley::cli

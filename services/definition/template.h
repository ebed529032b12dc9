#pragma once

// Text with {{config.<option>}}, {{fact.<name>}} and {{event.<param>}} references, parsed and
// checked when a definition is loaded and expanded when the handler runs. Expansion only
// substitutes text: nothing is evaluated and no shell is involved.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"

namespace parley::services {

struct Template {
  struct Part {
    enum class Kind { kLiteral, kConfig, kFact, kEvent };
    Kind kind = Kind::kLiteral;
    // The literal text, or the name referred to.
    std::string text;
  };
  std::string source;
  std::vector<Part> parts;
  // Where it was written, "<file>:<line>", for errors at run time.
  std::string origin;

  bool IsLiteral() const;
};

// Splits `text` into literal text and references; INVALID_ARGUMENT says what is wrong (an
// unterminated '{{', a reference to no known namespace or a malformed name), without a position:
// the caller knows where the text was written. Names are not checked against a definition.
absl::StatusOr<Template> ParseTemplate(absl::string_view text, std::string origin);

// A reference as written in a template ("{{config.port}}"); a literal part's text.
std::string ReferenceText(const Template::Part& part);

// Expands `t` for the handler run `ctx`: config options take the run's config value, else the
// default in `config_defaults`; facts must be set; event parameters must be present. A reference
// that cannot be resolved is an error naming the handler and where the template was written.
absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, const engine::RunContext& ctx,
    const std::map<std::string, std::string>& config_defaults);

// Expands `t` outside a run, for `what` (a health probe: "probe 'port'"): config options take
// `config`'s value, else the default in `config_defaults`; facts must be in `facts`; a template
// with event references cannot be expanded. Errors name `what` and where it was written.
absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, absl::string_view what, const std::map<std::string, std::string>& config,
    const std::map<std::string, std::string>& facts,
    const std::map<std::string, std::string>& config_defaults);

}  // namespace parley::services

#include "services/definition/template.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/run_context.h"
#include "services/definition/names.h"

namespace parley::services {
namespace {

using definition_internal::Matches;
using definition_internal::NameRule;

absl::string_view NamespaceOf(Template::Part::Kind kind) {
  switch (kind) {
    case Template::Part::Kind::kConfig:
      return "config";
    case Template::Part::Kind::kFact:
      return "fact";
    case Template::Part::Kind::kEvent:
      return "event";
    case Template::Part::Kind::kLiteral:
      break;
  }
  return "";
}

}  // namespace

std::string ReferenceText(const Template::Part& part) {
  if (part.kind == Template::Part::Kind::kLiteral) return part.text;
  return absl::StrCat("{{", NamespaceOf(part.kind), ".", part.text, "}}");
}

absl::StatusOr<Template> ParseTemplate(absl::string_view text, std::string origin) {
  using Kind = Template::Part::Kind;
  std::vector<Template::Part> parts;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find("{{", pos);
    if (open == absl::string_view::npos) {
      parts.push_back({Kind::kLiteral, std::string(text.substr(pos))});
      break;
    }
    if (open > pos) parts.push_back({Kind::kLiteral, std::string(text.substr(pos, open - pos))});
    const size_t close = text.find("}}", open + 2);
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unterminated '{{' in '", text,
          "' (a reference is {{config.<option>}}, {{fact.<name>}} or {{event.<param>}})"));
    }
    const absl::string_view inner =
        absl::StripAsciiWhitespace(text.substr(open + 2, close - open - 2));
    const size_t dot = inner.find('.');
    const absl::string_view ns = inner.substr(0, dot);
    const absl::string_view name =
        dot == absl::string_view::npos ? absl::string_view() : inner.substr(dot + 1);
    Kind kind = Kind::kLiteral;
    if (ns == "config") kind = Kind::kConfig;
    if (ns == "fact") kind = Kind::kFact;
    if (ns == "event") kind = Kind::kEvent;
    const NameRule rule = kind == Kind::kFact ? NameRule::kToken : NameRule::kIdentifier;
    if (kind == Kind::kLiteral || !Matches(name, rule)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'{{", inner,
                       "}}' is not a reference: expected {{config.<option>}}, {{fact.<name>}} "
                       "or {{event.<param>}}"));
    }
    parts.push_back({kind, std::string(name)});
    pos = close + 2;
  }
  return Template{std::string(text), std::move(parts), std::move(origin)};
}

bool Template::IsLiteral() const {
  return std::all_of(parts.begin(), parts.end(),
                     [](const Part& p) { return p.kind == Part::Kind::kLiteral; });
}

absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, const engine::RunContext& ctx,
    const std::map<std::string, std::string>& config_defaults) {
  std::string out;
  for (const Template::Part& p : t.parts) {
    auto fail = [&](absl::string_view why) {
      return absl::FailedPreconditionError(absl::StrCat("handler '", ctx.handler(), "': ", t.origin,
                                                        ": '", ReferenceText(p), "': ", why));
    };
    switch (p.kind) {
      case Template::Part::Kind::kLiteral:
        out += p.text;
        break;
      case Template::Part::Kind::kConfig: {
        std::optional<std::string> v = ctx.Config(p.text);
        if (!v) {
          auto it = config_defaults.find(p.text);
          if (it == config_defaults.end()) {
            return fail(absl::StrCat("config option '", p.text, "' has no value and no default"));
          }
          v = it->second;
        }
        out += *v;
        break;
      }
      case Template::Part::Kind::kFact: {
        std::optional<std::string> v = ctx.Value(p.text);
        if (!v) return fail(absl::StrCat("fact '", p.text, "' is not set"));
        out += *v;
        break;
      }
      case Template::Part::Kind::kEvent: {
        const auto& params = ctx.event().params();
        auto it = params.find(p.text);
        if (it == params.end()) {
          return fail(
              absl::StrCat("event '", ctx.event().name(), "' has no parameter '", p.text, "'"));
        }
        out += it->second;
        break;
      }
    }
  }
  return out;
}

absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, absl::string_view what, const std::map<std::string, std::string>& config,
    const std::map<std::string, std::string>& facts,
    const std::map<std::string, std::string>& config_defaults) {
  std::string out;
  for (const Template::Part& p : t.parts) {
    auto fail = [&](absl::string_view why) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": ", t.origin, ": '", ReferenceText(p), "': ", why));
    };
    switch (p.kind) {
      case Template::Part::Kind::kLiteral:
        out += p.text;
        break;
      case Template::Part::Kind::kConfig: {
        auto it = config.find(p.text);
        if (it == config.end()) it = config_defaults.find(p.text);
        if (it == config_defaults.end()) {
          return fail(absl::StrCat("config option '", p.text, "' has no value and no default"));
        }
        out += it->second;
        break;
      }
      case Template::Part::Kind::kFact: {
        auto it = facts.find(p.text);
        if (it == facts.end()) return fail(absl::StrCat("fact '", p.text, "' is not set"));
        out += it->second;
        break;
      }
      case Template::Part::Kind::kEvent:
        return fail("no event is being handled");
    }
  }
  return out;
}

}  // namespace parley::services

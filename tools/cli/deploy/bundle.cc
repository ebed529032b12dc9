#include "tools/cli/deploy/bundle.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status_macros.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", p.string()));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool IsUtf8Text(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    if (c == 0) return false;
    const int extra = c < 0x80           ? 0
                      : (c >> 5) == 0x6  ? 1
                      : (c >> 4) == 0xe  ? 2
                      : (c >> 3) == 0x1e ? 3
                                         : -1;
    if (extra < 0 || i + extra >= s.size() + 1) return false;
    for (int k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += extra + 1;
  }
  return true;
}

// "bin/app-hook" -> "bin_app-hook"; keys may hold [-._a-zA-Z0-9].
std::string KeyFor(const std::string& path) {
  std::string key;
  for (char c : path) {
    key += absl::ascii_isalnum(c) || c == '-' || c == '.' ? c : '_';
  }
  return key;
}

}  // namespace

absl::StatusOr<Bundle> MakeBundle(const std::string& dir, size_t max_bytes) {
  Bundle bundle;
  google::protobuf::Struct index;
  auto* entries = (*index.mutable_fields())["files"].mutable_list_value();
  size_t total = 0;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read ", dir, ": ", ec.message()));
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return absl::InternalError(absl::StrCat("cannot read ", dir, ": ", ec.message()));
    const fs::path p = it->path();
    if (p.filename() == "__pycache__") {
      it.disable_recursion_pending();
      continue;
    }
    if (!fs::is_regular_file(p) || p.extension() == ".pyc") continue;  // follows symlinks
    const std::string rel = fs::relative(p, dir).string();
    ASSIGN_OR_RETURN(std::string text, ReadFile(p));
    if (!IsUtf8Text(text)) {
      return absl::InvalidArgumentError(
          absl::StrCat(p.string(), ": not UTF-8 text; a ConfigMap cannot carry it"));
    }
    std::string key = KeyFor(rel);
    for (int n = 2; bundle.files.contains(key) || key == kBundleIndex; ++n) {
      key = absl::StrCat(KeyFor(rel), "-", n);
    }
    total += text.size();
    bundle.files[key] = std::move(text);
    struct stat st {};
    const bool executable = stat(p.c_str(), &st) == 0 && (st.st_mode & S_IXUSR) != 0;
    google::protobuf::Struct entry;
    (*entry.mutable_fields())["key"].set_string_value(key);
    (*entry.mutable_fields())["path"].set_string_value(rel);
    (*entry.mutable_fields())["executable"].set_bool_value(executable);
    *entries->add_values()->mutable_struct_value() = std::move(entry);
  }
  if (total > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": ", total, " bytes, more than a ConfigMap holds (", max_bytes, " allowed)"));
  }
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(index, &json);
  bundle.files[kBundleIndex] = json + "\n";
  return bundle;
}

absl::Status RestoreBundle(const std::string& mounted, const std::string& dir) {
  const fs::path src(mounted);
  ASSIGN_OR_RETURN(std::string json, ReadFile(src / kBundleIndex));
  google::protobuf::Struct index;
  if (auto s = google::protobuf::util::JsonStringToMessage(json, &index); !s.ok()) {
    return absl::DataLossError(
        absl::StrCat((src / kBundleIndex).string(), ": ", s.message().ToString()));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  for (const auto& v : index.fields().at("files").list_value().values()) {
    const auto& f = v.struct_value().fields();
    if (!f.contains("key") || !f.contains("path")) {
      return absl::DataLossError(
          absl::StrCat((src / kBundleIndex).string(), ": an entry without key or path"));
    }
    const std::string rel = f.at("path").string_value();
    if (rel.empty() || rel[0] == '/' || absl::StrContains(rel, "..")) {
      return absl::DataLossError(
          absl::StrCat((src / kBundleIndex).string(), ": bad path '", rel, "'"));
    }
    ASSIGN_OR_RETURN(std::string text, ReadFile(src / f.at("key").string_value()));
    const fs::path dst = fs::path(dir) / rel;
    fs::create_directories(dst.parent_path(), ec);
    std::ofstream out(dst, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", dst.string()));
    const bool executable = f.contains("executable") && f.at("executable").bool_value();
    fs::permissions(dst, executable ? fs::perms(0755) : fs::perms(0644), ec);
  }
  return absl::OkStatus();
}

}  // namespace parley::cli

#pragma once

#include <string>

namespace parley::cli {

// Where the binaries the CLI starts live (parleyd, openssl): beside the running `parley`, else
// in PATH; `name` itself when neither has it (starting it then fails, naming it).
std::string FindBinary(const std::string& name);

}  // namespace parley::cli

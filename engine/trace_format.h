#pragma once

// Human-readable rendering of a run's trace, for the demo and the CLI.

#include <string>

#include "parley/v1/kb.pb.h"

namespace parley::engine {

std::string FormatTrace(const v1::Trace& trace);

}  // namespace parley::engine

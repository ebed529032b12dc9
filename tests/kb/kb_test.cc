#include "kb/kb.h"
#include <gtest/gtest.h>
TEST(Kb, Placeholder) {}

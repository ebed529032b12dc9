#include "engine/engine.h"
#include <gtest/gtest.h>
TEST(Engine, Placeholder) {}

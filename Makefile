# The two entry points of the README. Both install what they need first.
JOBS ?= $(shell nproc)

.PHONY: setup build test demo engine-demo bench clean

setup:
	tools/setup

build: setup
	cmake --preset release >/dev/null
	cmake --build --preset release -j $(JOBS)

test: build
	ctest --preset release -j $(JOBS)

# The main job: the webstack example end to end (tools/demo/webstack-demo).
demo: build
	tools/demo/webstack-demo

# The engine alone, with its traces (docs/engine.md).
engine-demo: build
	build/bin/parley-engine-demo

bench: build
	build/bin/parley-bench engine --json
	build/bin/parley-bench kb --json
	build/bin/parley-bench exec --json
	build/bin/parley-bench up --json

clean:
	rm -rf build build-debug build-asan build-tsan

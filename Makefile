# The two entry points of the README. Both install what they need first.
JOBS ?= $(shell nproc)

.PHONY: setup build build-demo test demo engine-demo bench clean

setup:
	tools/setup

build: setup
	cmake --preset release >/dev/null
	cmake --build --preset release -j $(JOBS)

test: build
	ctest --preset release -j $(JOBS)

# Only what the demo runs: the CLI, parleyd and the hook tool (not the tests and benchmarks).
build-demo: setup
	cmake --preset release >/dev/null
	cmake --build --preset release -j $(JOBS) --target parley parleyd parley-hook

# The main job: the webstack example end to end (tools/demo/webstack-demo).
demo: build-demo
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

# Shortcuts for the scripts under scripts/; the scripts are the source of truth.
.PHONY: all build test demo run format clean

# One or several services: NAME (on 0.0.0.0:50051), NAME:PORT or NAME@ADDR, comma-separated,
# e.g. make run SERVICE=trivial:50051,timer:50052
SERVICE ?= trivial:50051

all: build

build:
	scripts/setup.sh
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j$$(nproc)

test:
	scripts/test.sh

demo:
	scripts/demo.sh

run: build
	build/examples/extproc-examples --service $(SERVICE)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-tsan

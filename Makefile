# Thin wrapper over CMake for the README's commands.
BUILD ?= build
PORT ?= 8080
JOBS ?= $(shell nproc)

.PHONY: all deps build run test clean

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: build
	$(BUILD)/src/server/wshub --listen 127.0.0.1:$(PORT) --echo --config examples/demo.json

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j2 --timeout 600

clean:
	rm -rf $(BUILD)

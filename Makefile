# The two commands of the README:
#   make run   install what is missing, build, start the embedded stack (Ctrl-C stops it)
#   make test  install what is missing, build, run the whole test suite under ctest
# Other targets: build, asan, tsan, fuzz, bench, clean.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# No "make[N]: Entering directory" lines from the sub-makes of cmake's build.
MAKEFLAGS += --no-print-directory

.PHONY: run test setup build asan tsan fuzz bench clean

setup:
	@bash tools/setup.sh

# The compiler's output goes to $(BUILD)/build.log, shown only when the build fails.
build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@echo "build: building in $(BUILD)/ (log: $(BUILD)/build.log; a first build takes minutes)"
	@cmake --build $(BUILD) -j $(JOBS) >$(BUILD)/build.log 2>&1 || \
	  { cat $(BUILD)/build.log; echo "build: failed (log: $(BUILD)/build.log)" >&2; exit 1; }
	@echo "build: done"

run: build
	@exec bash tools/run-stack.sh $(BUILD)

test: setup
	@bash tests/run-all.sh

asan: setup
	@cmake -S . -B build-asan -DIB_SANITIZE_ADDRESS=ON >/dev/null && cmake --build build-asan -j $(JOBS)

tsan: setup
	@cmake -S . -B build-tsan -DIB_SANITIZE_THREAD=ON >/dev/null && cmake --build build-tsan -j $(JOBS)

fuzz: setup
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -DIB_FUZZ=ON >/dev/null && cmake --build build-fuzz -j $(JOBS)

bench: build
	@bash perf/bench-engine.sh $(BUILD)
	@bash perf/bench-proxy.sh $(BUILD)
	@bash perf/bench-tokenizer.sh $(BUILD)
	@bash perf/bench-sync.sh $(BUILD)
	@bash perf/bench-controlplane.sh $(BUILD)

clean:
	rm -rf build build-asan build-tsan build-fuzz

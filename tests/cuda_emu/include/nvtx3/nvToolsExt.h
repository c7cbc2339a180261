/* Stand-in for NVTX3's nvToolsExt.h under host emulation (tests/cuda_emu): the two range calls the
 * kernels/ files make, recorded by tests/cuda_emu/emu.cpp so that tests can check the ranges'
 * names and nesting (kvs_cuda_emu_nvtx_log). */
#ifndef KVS_EMU_NVTOOLSEXT_H
#define KVS_EMU_NVTOOLSEXT_H

int nvtxRangePushA(const char *message);
int nvtxRangePop(void);

#endif

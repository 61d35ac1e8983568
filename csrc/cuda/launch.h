// The one launch spelling of the CUDA kernels: FASTGAN_LAUNCH(kernel, grid, block, smem, stream)(args...)
// is kernel<<<grid, block, smem, stream>>>(args...) under nvcc and the CPU emulator's launch
// (csrc/emu/simt.h: runs the kernel on fibers, records name and grid) in the emulated build. A
// kernel name holding a comma (a template with two arguments) must be parenthesized.
#pragma once
#include <cuda_runtime.h>

#ifdef __CUDACC__
#define FASTGAN_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#else
#define FASTGAN_LAUNCH(kernel, grid, block, smem, stream) FASTGAN_EMU_LAUNCH(kernel, grid, block, smem, stream)
#endif

// The one launch spelling of the CUDA kernels: FASTGAN_LAUNCH(kernel, grid, block, smem, stream)(args...)
// is kernel<<<grid, block, smem, stream>>>(args...) under nvcc and the CPU emulator's launch
// (csrc/emu/simt.h: runs the kernel on fibers, records name and grid) in the emulated build. A
// kernel name holding a comma (a template with two arguments) must be parenthesized.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#ifdef __CUDACC__
#define FASTGAN_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#else
#define FASTGAN_LAUNCH(kernel, grid, block, smem, stream) FASTGAN_EMU_LAUNCH(kernel, grid, block, smem, stream)
#endif

namespace fastgan {
namespace cuda {

// Blocks for one warp per row with `warps` warps a block (at least one block).
inline unsigned warp_rows_blocks(int64_t rows, int warps) {
  const int64_t blocks = (rows + warps - 1) / warps;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// Blocks of a grid-stride loop over `count` items with `threads` a block: at least 1, at most
// 65535 * 16 (the loop covers the rest).
inline unsigned grid_stride_blocks(int64_t count, int threads) {
  const int64_t b = (count + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < 65535 * 16 ? b : 65535 * 16));
}

}  // namespace cuda
}  // namespace fastgan

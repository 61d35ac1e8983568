// A small SIMT emulator: runs the CUDA kernels of csrc/cuda/*.cu, unchanged, on the CPU, so CI
// (no GPU) executes them under AddressSanitizer and UBSan. Included through the shim
// csrc/emu/include/cuda_runtime.h; docs/cuda_emulation.md is the user-facing note.
//
// Design (and why):
// - Blocks run one after another, in blockIdx order (x fastest). A block's threads are fibers
//   (ucontext) on ONE OS thread, scheduled cooperatively: a thread runs until it reaches a barrier
//   (__syncthreads, a warp shuffle/vote/__syncwarp) or returns, then the next runnable thread runs.
//   Why fibers and not std::thread per CUDA thread: a block of 256 threads crossing a few thousand
//   barriers costs a few thousand cheap context switches instead of OS-thread wake-ups on a
//   2-core CI machine, the interleaving is deterministic (a failure reproduces), and a deadlock is
//   a state the scheduler sees (no runnable thread) rather than a hang. ASan is told about every
//   stack switch (__sanitizer_start/finish_switch_fiber), so it checks fiber stacks as usual.
// - Between two barriers the threads of a block run in a fixed order, by default thread 0 first;
//   FASTGAN_EMU_ORDER=reverse runs the highest thread first. A kernel whose result changes with the
//   order has a race between barriers (tests run both orders).
// - __syncthreads: a barrier over the whole block. It must be reached by every thread of the block
//   at the same source line (the same `bar.sync`); a thread that returns while others wait, threads
//   waiting at different lines, or a warp operation whose lanes never all arrive end the launch with
//   an error naming the kernel, block, line and counts: the launcher's cudaGetLastError() returns
//   cudaErrorLaunchFailure and fastgan_emu::last_message() holds the text. A watchdog thread aborts
//   the process with the kernel's name if one launch runs longer than FASTGAN_EMU_TIMEOUT_S seconds
//   (default 300): the last resort for a thread that spins on memory, which no scheduler can see.
// - __shared__ is a function-local static (csrc/emu/include/cuda_runtime.h): one copy, shared by
//   the block's fibers, reused by the next block. Stale shared memory from the previous block (or
//   launch) is NOT poisoned: GCC places a template's static locals in COMDAT sections that neither a
//   named section nor ASan's global redzones reach, so there is no cheap way to find them. UBSan's
//   -fsanitize=bounds still checks every index of a shared array against its declared extents.
// - Warp operations (__shfl*_sync, __ballot_sync, __any/__all_sync, __syncwarp) are barriers over
//   the lanes of the mask: each lane deposits its value in per-warp storage and waits; the last lane
//   to arrive publishes the deposited values and releases the others. Every lane named in the mask
//   must arrive, with the same mask, or the launch fails. warpSize is 32; warp w of a block is the
//   threads of linear index 32 w .. 32 w + 31 (x fastest, then y, then z), as on NVIDIA GPUs.
// - Atomics (atomicAdd, atomicMax, atomicCAS, atomicExch) are plain read-modify-writes done by one
//   fiber at a time; the fibers share one OS thread, so they are atomic by construction.
// - WMMA fragments (csrc/emu/include/mma.h) hold the whole tile in every thread.
//
// What this cannot reproduce (see docs/cuda_emulation.md for the full list): data races between
// barriers unless the two orders differ in result; the GPU memory model (a missing __threadfence or
// volatile, stale L1, reordering); warp-synchronous code that relies on lockstep execution without a
// *_sync; a fragment's element-to-lane layout; shared-memory bank conflicts, occupancy, register
// limits, __launch_bounds__ (not checked); device math functions' ULP errors (host libm is used);
// FMA contraction choices of nvcc; concurrent blocks (a kernel that waits for another block deadlocks
// here; none of ours do).
#pragma once

#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FASTGAN_EMU_ASAN 1
#endif

namespace fastgan_emu {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;  // per CUDA thread; ASan's redzones make frames larger

enum class FiberState { kReady, kBlockWait, kWarpWait, kDone };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;  // kStackBytes, lowest page a guard page
  FiberState state = FiberState::kReady;
  uint3 tid{0, 0, 0};
  int linear = 0;
  int wait_line = 0;  // source line of the barrier this thread waits at
  const char* wait_what = "";
  void* fake_stack = nullptr;  // ASan's fake-stack handle while switched out
};

struct WarpState {
  uint64_t slot[kWarp];  // deposited values of the current operation
  uint64_t out[kWarp];   // values of the last completed operation
  unsigned arrived = 0, expect = 0;
};

struct LaunchRecord {
  std::string name;  // "file.cu:kernel"
  dim3 grid, block;
  size_t smem;
};

struct State {
  // Launch-wide.
  const char* kernel = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 grid_dim, block_dim;
  std::function<void()> body;
  // Block-wide.
  std::vector<Fiber> fibers;
  int nthreads = 0, nwarps = 0;
  int at_barrier = 0, done = 0;
  WarpState warps[kMaxThreads / kWarp];
  Fiber* cur = nullptr;
  ucontext_t sched;
  const void* sched_bottom = nullptr;  // the scheduler's stack, learned on the first switch
  size_t sched_size = 0;
  bool failed = false;
  std::string message;  // of the last failed launch
  cudaError_t last_error = cudaSuccess;
  std::vector<LaunchRecord> records;
  bool reverse = false;
  bool dry_run = false;  // record launches without running them (launch-count tests at large N)
  // Watchdog.
  std::atomic<int64_t> deadline_ns{0};
  std::mutex name_mu;
  std::string running;  // kernel name of the launch in progress, for the watchdog
};

inline State& state() {
  static State* s = new State;  // never destroyed: the watchdog thread may outlive static destructors
  return *s;
}

// The fibers of the block running now (the pool may hold more, from a larger block before).
struct FiberRange {
  Fiber *b, *e;
  Fiber* begin() const { return b; }
  Fiber* end() const { return e; }
};
inline FiberRange block_fibers() {
  State& s = state();
  return FiberRange{s.fibers.data(), s.fibers.data() + s.nthreads};
}

// "__syncthreads at line L reached by k of n threads; ..." for the fibers waiting now.
inline std::string partial_barrier_message() {
  State& s = state();
  int line = 0;
  for (Fiber& g : block_fibers())
    if (g.state == FiberState::kBlockWait) {
      line = g.wait_line;
      break;
    }
  char msg[240];
  std::snprintf(msg, sizeof msg,
                "__syncthreads at line %d reached by %d of %d threads; %d threads returned without reaching it "
                "(a deadlock on a GPU)",
                line, s.at_barrier, s.nthreads, s.done);
  return msg;
}

inline cudaError_t take_last_error() {
  State& s = state();
  const cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;
  return e;
}
inline const std::string& last_message() { return state().message; }

// ---- fiber switching (with ASan's annotations) ----

inline void start_switch(void** fake_save, const void* bottom, size_t size) {
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
  (void)fake_save, (void)bottom, (void)size;
#endif
}
inline void finish_switch(void* fake_save, const void** old_bottom, size_t* old_size) {
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_save, old_bottom, old_size);
#else
  (void)fake_save, (void)old_bottom, (void)old_size;
#endif
}

// From a fiber back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield_to_scheduler() {
  State& s = state();
  Fiber* f = s.cur;
  start_switch(&f->fake_stack, s.sched_bottom, s.sched_size);
  swapcontext(&f->ctx, &s.sched);
  finish_switch(f->fake_stack, nullptr, nullptr);
}

// Ends the launch: records the message, returns to the scheduler and never comes back (the block's
// fibers are abandoned; their stacks are unpoisoned before reuse).
[[noreturn]] inline void fail(const std::string& what) {
  State& s = state();
  if (!s.failed) {
    s.failed = true;
    char where[160];
    std::snprintf(where, sizeof where, " (kernel %s, block (%u,%u,%u), thread (%u,%u,%u))", s.kernel ? s.kernel : "?",
                  s.block_idx.x, s.block_idx.y, s.block_idx.z, s.cur ? s.cur->tid.x : 0u, s.cur ? s.cur->tid.y : 0u,
                  s.cur ? s.cur->tid.z : 0u);
    s.message = "fastgan emulator: " + what + where;
  }
  if (!s.cur) {
    std::fprintf(stderr, "%s\n", s.message.c_str());
    std::abort();
  }
  Fiber* f = s.cur;
  start_switch(&f->fake_stack, s.sched_bottom, s.sched_size);
  swapcontext(&f->ctx, &s.sched);
  std::abort();  // never resumed
}

inline Fiber& current(const char* what) {
  State& s = state();
  if (!s.cur) {
    std::fprintf(stderr, "fastgan emulator: %s called outside a kernel\n", what);
    std::abort();
  }
  return *s.cur;
}

inline void fiber_main(unsigned hi, unsigned lo) {
  State& s = state();
  Fiber* f = reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo);
  finish_switch(nullptr, &s.sched_bottom, &s.sched_size);
  s.body();
  f->state = FiberState::kDone;
  ++s.done;
  if (s.at_barrier > 0 && s.at_barrier + s.done == s.nthreads) fail(partial_barrier_message());
  start_switch(nullptr, s.sched_bottom, s.sched_size);  // this fiber's fake stack dies with it
  setcontext(&s.sched);
}

// ---- barriers ----

inline void syncthreads(int line) {
  State& s = state();
  Fiber& f = current("__syncthreads");
  f.state = FiberState::kBlockWait;
  f.wait_line = line;
  f.wait_what = "__syncthreads";
  if (++s.at_barrier == s.nthreads) {
    for (Fiber& g : block_fibers())
      if (g.wait_line != line) {
        char msg[200];
        std::snprintf(msg, sizeof msg,
                      "the block's threads wait at different __syncthreads (line %d and line %d): undefined on a GPU",
                      line, g.wait_line);
        fail(msg);
      }
    for (Fiber& g : block_fibers()) g.state = FiberState::kReady;
    s.at_barrier = 0;
  } else if (s.done > 0 && s.at_barrier + s.done == s.nthreads) {
    fail(partial_barrier_message());
  }
  yield_to_scheduler();  // the others run up to this barrier (or past it, once released)
}

inline unsigned lanes_present(int warp) {
  const int n = state().nthreads - warp * kWarp;
  return n >= kWarp ? 0xffffffffu : ((1u << n) - 1u);
}

// A warp barrier over `mask` exchanging one 64-bit value per lane; returns the lanes' values.
inline const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* what, int line) {
  State& s = state();
  Fiber& f = current(what);
  const int warp = f.linear / kWarp, lane = f.linear % kWarp;
  WarpState& w = s.warps[warp];
  const unsigned want = mask & lanes_present(warp);
  char msg[200];
  if (!(mask >> lane & 1u)) {
    std::snprintf(msg, sizeof msg, "%s at line %d by lane %d, which its mask 0x%08x does not name", what, line, lane,
                  mask);
    fail(msg);
  }
  if (w.arrived == 0) {
    w.expect = want;
  } else if (w.expect != want) {
    std::snprintf(msg, sizeof msg, "%s at line %d with mask 0x%08x while other lanes of the warp wait with 0x%08x", what,
                  line, mask, w.expect);
    fail(msg);
  }
  w.slot[lane] = value;
  w.arrived |= 1u << lane;
  f.state = FiberState::kWarpWait;
  f.wait_line = line;
  f.wait_what = what;
  if (w.arrived == w.expect) {
    std::memcpy(w.out, w.slot, sizeof w.out);
    for (int l = 0; l < kWarp; ++l)
      if (w.expect >> l & 1u) s.fibers[warp * kWarp + l].state = FiberState::kReady;
    w.arrived = 0;
  }
  yield_to_scheduler();
  return w.out;
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// CUDA's shuffle rule: lanes are split into segments of `width`; a source outside the caller's
// segment (shfl_up/down past the edge) returns the caller's own value.
template <typename T>
inline T shfl_impl(int line, int kind, unsigned mask, T v, int arg, int width = kWarp) {
  static const char* names[] = {"__shfl_sync", "__shfl_xor_sync", "__shfl_down_sync", "__shfl_up_sync"};
  if (width <= 0 || width > kWarp || (width & (width - 1)) != 0) fail("shuffle width is not a power of 2 <= 32");
  const int lane = current(names[kind]).linear % kWarp;
  const uint64_t* vals = warp_exchange(mask, to_bits(v), names[kind], line);
  const int base = lane & ~(width - 1);
  int src = lane;
  switch (kind) {
    case 0:
      src = base + (arg & (width - 1));
      break;
    case 1:
      src = lane ^ arg;
      if (src >= base + width || src < base) src = lane;
      break;
    case 2:
      src = (lane - base + arg < width) ? lane + arg : lane;
      break;
    case 3:
      src = (lane - base - arg >= 0) ? lane - arg : lane;
      break;
  }
  if (!(mask >> src & 1u) || !(lanes_present(current(names[kind]).linear / kWarp) >> src & 1u)) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s at line %d reads lane %d, outside mask 0x%08x (undefined on a GPU)",
                  names[kind], line, src, mask);
    fail(msg);
  }
  return from_bits<T>(vals[src]);
}

inline unsigned ballot_impl(unsigned mask, bool pred, const char* what, int line) {
  const uint64_t* vals = warp_exchange(mask, pred ? 1u : 0u, what, line);
  unsigned r = 0;
  for (int l = 0; l < kWarp; ++l)
    if ((mask >> l & 1u) && vals[l]) r |= 1u << l;
  return r;
}

inline bool all_impl(unsigned mask, bool pred, int line) {
  return ballot_impl(mask, pred, "__all_sync", line) == (mask & lanes_present(current("__all_sync").linear / kWarp));
}

inline void syncwarp_impl(int line, unsigned mask = 0xffffffffu) { (void)warp_exchange(mask, 0, "__syncwarp", line); }

// ---- launch ----

inline void unpoison(char* p, size_t n) {
#ifdef FASTGAN_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

inline void start_watchdog() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::thread([] {
      State& s = state();
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const int64_t d = s.deadline_ns.load();
        const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now().time_since_epoch())
                                .count();
        if (d != 0 && now > d) {
          std::lock_guard<std::mutex> g(s.name_mu);
          std::fprintf(stderr,
                       "fastgan emulator: kernel %s ran past FASTGAN_EMU_TIMEOUT_S (a thread spinning on memory?); "
                       "aborting\n",
                       s.running.c_str());
          std::fflush(stderr);
          std::abort();
        }
      }
    }).detach();
  });
}

// A fresh context for thread t of the block, entering fiber_main (a function of its own:
// getcontext returns twice in principle, which must not touch the scheduler loop's variables).
__attribute__((noinline)) inline void init_fiber(Fiber& f, int t, dim3 block, long page) {
  f.linear = t;
  f.tid = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  f.state = FiberState::kReady;
  f.wait_line = 0;
  f.fake_stack = nullptr;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack + page;
  f.ctx.uc_stack.ss_size = kStackBytes - page;
  f.ctx.uc_link = nullptr;
  const uintptr_t fp = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 2, static_cast<unsigned>(fp >> 32),
              static_cast<unsigned>(fp & 0xffffffffu));
}

// Runs one launch to completion. Returns cudaSuccess, cudaErrorInvalidConfiguration or
// cudaErrorLaunchFailure (the message in last_message()).
inline cudaError_t run_launch(const char* name, dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  State& s = state();
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > kMaxThreads || block.z > 64 ||
      grid.x > 0x7fffffffu || grid.y > 65535u || grid.z > 65535u || smem > 48 * 1024) {
    s.message = std::string("fastgan emulator: invalid launch configuration of ") + name;
    return cudaErrorInvalidConfiguration;
  }
  s.records.push_back(LaunchRecord{name, grid, block, smem});
  if (s.dry_run) return cudaSuccess;
  const char* order = std::getenv("FASTGAN_EMU_ORDER");
  s.reverse = order && std::strcmp(order, "reverse") == 0;
  const char* tmo = std::getenv("FASTGAN_EMU_TIMEOUT_S");
  const double timeout_s = tmo ? std::atof(tmo) : 300.0;
  start_watchdog();
  {
    std::lock_guard<std::mutex> g(s.name_mu);
    s.running = name;
  }
  s.deadline_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count() +
                  static_cast<int64_t>(timeout_s * 1e9);
  s.kernel = name;
  s.grid_dim = grid;
  s.block_dim = block;
  s.body = std::move(body);
  s.nthreads = static_cast<int>(nthreads);
  s.nwarps = (s.nthreads + kWarp - 1) / kWarp;
  if (s.fibers.size() < nthreads) {
    const size_t old = s.fibers.size();
    s.fibers.resize(nthreads);
    const long page = sysconf(_SC_PAGESIZE);
    for (size_t t = old; t < nthreads; ++t) {
      void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        std::perror("fastgan emulator: mmap of a fiber stack");
        std::abort();
      }
      mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
      s.fibers[t].stack = static_cast<char*>(p);
    }
  }
  s.failed = false;
  const long page = sysconf(_SC_PAGESIZE);
  for (unsigned bz = 0; bz < grid.z && !s.failed; ++bz)
    for (unsigned by = 0; by < grid.y && !s.failed; ++by)
      for (unsigned bx = 0; bx < grid.x && !s.failed; ++bx) {
        s.block_idx = uint3{bx, by, bz};
        s.at_barrier = 0;
        s.done = 0;
        for (auto& w : s.warps) w.arrived = 0;
        for (int t = 0; t < s.nthreads; ++t) init_fiber(s.fibers[t], t, block, page);
        while (s.done < s.nthreads && !s.failed) {
          bool ran = false;
          for (int k = 0; k < s.nthreads && !s.failed; ++k) {
            Fiber& f = s.fibers[s.reverse ? s.nthreads - 1 - k : k];
            if (f.state != FiberState::kReady) continue;
            ran = true;
            s.cur = &f;
            void* fake = nullptr;
            start_switch(&fake, f.stack + page, kStackBytes - page);
            swapcontext(&s.sched, &f.ctx);
            finish_switch(fake, nullptr, nullptr);
            s.cur = nullptr;
          }
          if (!ran && !s.failed) {  // nobody can run: a warp operation whose lanes never all arrive
            std::string what = "no thread can run";
            for (Fiber& f : block_fibers())
              if (f.state == FiberState::kWarpWait) {
                char msg[240];
                std::snprintf(msg, sizeof msg,
                              "%s at line %d: not every lane of its mask arrived (%d threads returned, %d wait at "
                              "__syncthreads): a deadlock on a GPU (kernel %s, block (%u,%u,%u), thread (%u,%u,%u))",
                              f.wait_what, f.wait_line, s.done, s.at_barrier, name, bx, by, bz, f.tid.x, f.tid.y,
                              f.tid.z);
                what = msg;
                break;
              }
            s.message = "fastgan emulator: " + what;
            s.failed = true;
          }
        }
        if (s.failed)  // abandoned fibers leave ASan's stack poisoning behind
          for (int t = 0; t < s.nthreads; ++t) unpoison(s.fibers[t].stack + page, kStackBytes - page);
      }
  s.deadline_ns = 0;
  s.kernel = nullptr;
  s.body = nullptr;
  if (s.failed) {
    s.last_error = cudaErrorLaunchFailure;
    if (std::getenv("FASTGAN_EMU_VERBOSE")) std::fprintf(stderr, "%s\n", s.message.c_str());
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

// "path/to/file.cu" + "forward_kernel<decltype(tag)>" -> "file.cu:forward_kernel".
inline std::string launch_name(const char* file, const char* kernel) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  std::string k(kernel);
  const size_t lt = k.find('<');
  if (lt != std::string::npos) k.resize(lt);
  while (!k.empty() && k.back() == ' ') k.pop_back();
  return std::string(base) + ":" + k;
}

template <typename... P>
struct Launcher {
  std::string name;
  void (*fn)(P...);
  dim3 grid, block;
  size_t smem;
  // As `kernel<<<...>>>(args...)`: the arguments are converted to the parameter types and copied
  // once, and every thread gets its own copy of the parameters. A failed launch leaves its error for
  // cudaGetLastError(), as CUDA does.
  template <typename... A>
  void operator()(A&&... args) const {
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    auto f = fn;
    const cudaError_t e = run_launch(name.c_str(), grid, block, smem, [f, &params] { std::apply(f, params); });
    if (e != cudaSuccess) state().last_error = e;
  }
};

template <typename... P>
Launcher<P...> make_launcher(const char* file, const char* kernel, void (*fn)(P...), dim3 grid, dim3 block,
                             size_t smem, cudaStream_t) {
  return Launcher<P...>{launch_name(file, kernel), fn, grid, block, smem};
}

inline const uint3& thread_idx() { return current("threadIdx").tid; }

}  // namespace fastgan_emu

// ---- the CUDA built-ins ----

#define threadIdx (::fastgan_emu::thread_idx())
#define blockIdx (::fastgan_emu::state().block_idx)
#define blockDim (::fastgan_emu::state().block_dim)
#define gridDim (::fastgan_emu::state().grid_dim)
#define warpSize 32

#define __syncthreads() ::fastgan_emu::syncthreads(__LINE__)
#define __syncwarp(...) ::fastgan_emu::syncwarp_impl(__LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) ::fastgan_emu::shfl_impl(__LINE__, 0, mask, v, src __VA_OPT__(,) __VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::fastgan_emu::shfl_impl(__LINE__, 1, mask, v, m __VA_OPT__(,) __VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::fastgan_emu::shfl_impl(__LINE__, 2, mask, v, d __VA_OPT__(,) __VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::fastgan_emu::shfl_impl(__LINE__, 3, mask, v, d __VA_OPT__(,) __VA_ARGS__)
#define __ballot_sync(mask, pred) ::fastgan_emu::ballot_impl(mask, (pred), "__ballot_sync", __LINE__)
#define __any_sync(mask, pred) (::fastgan_emu::ballot_impl(mask, (pred), "__any_sync", __LINE__) != 0u)
#define __all_sync(mask, pred) ::fastgan_emu::all_impl(mask, (pred), __LINE__)

template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// The one launch spelling of csrc/cuda/launch.h, emulator side.
#define FASTGAN_EMU_LAUNCH(kernel, grid, block, smem, stream) \
  ::fastgan_emu::make_launcher(__FILE__, #kernel, kernel, grid, block, smem, stream)

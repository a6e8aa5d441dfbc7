// Class-index targets checked without stalling the GPU (NLLLoss, CrossEntropyLoss).
// A bad target is one outside [0, C) that is not ignore_index. A small kernel counts them (and
// their smallest and largest flat index) before the loss kernels, copies the counts to pinned host
// memory and records an event; the loss kernels are queued behind it, and wait() blocks the host
// on that event only. So the GPU runs the loss while the host learns whether to raise an
// IndexError. (One stream sync after the loss, as before, left the GPU idle until the host had
// launched the next op: 0.24 ms of a 1.07 ms cross-entropy step on an H100, check 3.)
// The loss kernels stay in bounds for a bad target (they write NaN there). While a CUDA graph is
// captured no host wait is allowed: nothing is checked then, and the NaN is the only sign.
#pragma once

#include <c10/cuda/CUDAGraphsC10Utils.h>

#include "launch.cuh"

namespace torchmodules {

struct TargetStatus {
  int64_t count = 0, first = -1, last = -1;  // bad targets, and the smallest and largest flat index
};

// st = [count, max of ~i, max of i + 1] over bad i: all zeros (one memset) while none is seen,
// and the max of ~i is ~(smallest i). Integer atomics: the same result whatever the timing.
template <class I>
__global__ void target_check_kernel(unsigned long long* st, const I* __restrict__ tgt, int64_t n, int64_t C,
                                    int64_t ignore_index) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = int64_t(tgt[i]);
    if (t != ignore_index && (t < 0 || t >= C)) {
      atomicAdd(st, 1ull);
      atomicMax(st + 1, ~static_cast<unsigned long long>(i));
      atomicMax(st + 2, static_cast<unsigned long long>(i) + 1);
    }
  }
}

class TargetCheck {
 public:
  // Queues the check of tgt[0, n) on on's current stream; launch the loss kernels next.
  template <class I>
  TargetCheck(const at::TensorBase& on, const I* tgt, int64_t n, int64_t C, int64_t ignore_index) {
    const c10::cuda::CUDAGuard guard(on.device());
    active_ = n > 0 && c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
    if (!active_) return;
    device_ = on.device();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const at::TensorBase dev = new_workspace({3}, on.options().dtype(at::kLong));
    auto* st = reinterpret_cast<unsigned long long*>(dev.data_ptr());
    C10_CUDA_CHECK(cudaMemsetAsync(st, 0, 3 * sizeof(unsigned long long), stream));
    tm_launch(on, dim3(unsigned(tm_blocks(n, 256, 1024))), dim3(256), 0, target_check_kernel<I>, st, tgt, n, C,
              ignore_index);
    host_ = new_workspace({3}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    // From here the destructor must run (it waits for the copy before host_ goes back to the pinned
    // cache), and a throwing constructor has none: an error syncs the stream itself.
    try {
      C10_CUDA_CHECK(cudaMemcpyAsync(host_.data_ptr(), st, 3 * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
      C10_CUDA_CHECK(cudaEventRecord(done_, stream));
    } catch (...) {
      C10_CUDA_IGNORE_ERROR(cudaStreamSynchronize(stream));
      C10_CUDA_IGNORE_ERROR(cudaEventDestroy(done_));
      throw;
    }
  }
  ~TargetCheck() {  // (after an exception before wait(): the copy must land before host_ is reused)
    if (!done_) return;
    try {  // (as c10's CUDAEvent: a destructor must not throw)
      const c10::cuda::CUDAGuard guard(device_);
      if (!waited_) C10_CUDA_IGNORE_ERROR(cudaEventSynchronize(done_));
      C10_CUDA_IGNORE_ERROR(cudaEventDestroy(done_));
    } catch (...) {
    }
  }
  TargetCheck(const TargetCheck&) = delete;
  TargetCheck& operator=(const TargetCheck&) = delete;
  // Blocks until the check (not the loss) has run.
  TargetStatus wait() {
    TargetStatus s;
    if (!active_) return s;
    const c10::cuda::CUDAGuard guard(device_);
    C10_CUDA_CHECK(cudaEventSynchronize(done_));
    waited_ = true;
    const auto* h = reinterpret_cast<const unsigned long long*>(host_.data_ptr());
    s.count = int64_t(h[0]);
    if (s.count > 0) s.first = int64_t(~h[1]), s.last = int64_t(h[2]) - 1;
    return s;
  }

 private:
  bool active_ = false, waited_ = false;
  c10::Device device_{c10::DeviceType::CUDA, 0};
  at::TensorBase host_;
  cudaEvent_t done_ = nullptr;
};

}  // namespace torchmodules

// One launch helper for every CUDA kernel: device guard, current stream, grid size,
// launch check; plus the float conversions the half types need (torch builds with
// __CUDA_NO_HALF_OPERATORS__, so half and bfloat16 convert to float explicitly).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops.h"

namespace torchmodules {

// Blocks for n work items of `per_block` each, capped for grid-stride loops.
inline int64_t tm_blocks(int64_t n, int64_t per_block, int64_t cap = 65535LL * 8) {
  const int64_t b = (n + per_block - 1) / per_block;
  return b < 1 ? 1 : (b > cap ? cap : b);
}

// Launches kernel<<<grid, block, smem, current stream of `on`>>>(args...) on the device
// of `on`, then checks the launch.
template <typename Kernel, typename... Args>
void tm_launch(const at::TensorBase& on, dim3 grid, dim3 block, size_t smem, Kernel kernel, Args&&... args) {
  const c10::cuda::CUDAGuard guard(on.device());
  kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Device-side type map: at::Half -> __half, at::BFloat16 -> __nv_bfloat16 (same bits).
template <typename T> struct cuda_type { using type = T; };
template <> struct cuda_type<at::Half> { using type = __half; };
template <> struct cuda_type<at::BFloat16> { using type = __nv_bfloat16; };
template <typename T> using cuda_t = typename cuda_type<T>::type;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ double to_float(double v) { return v; }  // stays double
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return v; }  // double only
template <typename T> __device__ __forceinline__ T from_acc(float v) { return from_float<T>(v); }

// Pointer of a tensor as its device type.
template <typename T>
cuda_t<T>* dptr(const at::TensorBase& t) { return reinterpret_cast<cuda_t<T>*>(t.data_ptr<T>()); }

// True when every pointer is aligned to `bytes` (for 16-byte vector accesses).
inline bool tm_aligned(int64_t bytes, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % bytes) return false;
  return true;
}

}  // namespace torchmodules

// Test harness for the half-type conversions, fast_exp and fast_log of csrc/simd.h, built and run by
// tests/test_half_cpu.py: the same loops the kernels vectorise, compiled for each ISA of
// TM_SIMD's clones that this CPU runs, next to c10's scalar conversions (what the kernels
// used before).
//   half_convert IN16 IN32 OUT:  IN16 holds uint16 bit patterns, IN32 uint32 (float) ones;
//   writes OUT.<isa>.{h2f,b2f,f2h,f2b,exp,expd,log,logd} (exp: fast_exp of the IN32 floats, expd:
//   of them widened to double; log, logd: fast_log's) and OUT.c10.{h2f,...,f2b}, and prints the
//   ISAs it ran.
#include <cstdio>
#include <string>
#include <vector>

#include "simd.h"

using namespace torchmodules;

#define CONVERSIONS(NAME, TARGET)                                                                         \
  TARGET void NAME##_widen(uint32_t* __restrict h2f, uint32_t* __restrict b2f, const uint16_t* __restrict in,  \
                           long n) {                                                                      \
    for (long i = 0; i < n; ++i) {                                                                        \
      h2f[i] = bits_as<uint32_t>(half_bits_to_float(in[i]));                                              \
      b2f[i] = bits_as<uint32_t>(bf16_bits_to_float(in[i]));                                              \
    }                                                                                                     \
  }                                                                                                       \
  TARGET void NAME##_narrow(uint16_t* __restrict f2h, uint16_t* __restrict f2b, const uint32_t* __restrict in, \
                            long n) {                                                                     \
    for (long i = 0; i < n; ++i) {                                                                        \
      f2h[i] = float_to_half_bits(bits_as<float>(in[i]));                                                 \
      f2b[i] = float_to_bf16_bits(bits_as<float>(in[i]));                                                \
    }                                                                                                     \
  }                                                                                                       \
  TARGET void NAME##_exp(float* __restrict e, double* __restrict ed, const uint32_t* __restrict in, long n) { \
    for (long i = 0; i < n; ++i) e[i] = fast_exp(bits_as<float>(in[i]));                                 \
    for (long i = 0; i < n; ++i) ed[i] = fast_exp(double(bits_as<float>(in[i])));                        \
  }                                                                                                       \
  TARGET void NAME##_log(float* __restrict e, double* __restrict ed, const uint32_t* __restrict in, long n) { \
    for (long i = 0; i < n; ++i) e[i] = fast_log(bits_as<float>(in[i]));                                 \
    for (long i = 0; i < n; ++i) ed[i] = fast_log(double(bits_as<float>(in[i])));                        \
  }

#if defined(__x86_64__) && defined(__GNUC__)
CONVERSIONS(v4, __attribute__((target("arch=x86-64-v4"))))
CONVERSIONS(v3, __attribute__((target("arch=x86-64-v3"))))
#endif
CONVERSIONS(base, )

static void c10_widen(uint32_t* h2f, uint32_t* b2f, const uint16_t* in, long n) {
  for (long i = 0; i < n; ++i) {
    h2f[i] = bits_as<uint32_t>(static_cast<float>(c10::Half(in[i], c10::Half::from_bits())));
    b2f[i] = bits_as<uint32_t>(static_cast<float>(c10::BFloat16(in[i], c10::BFloat16::from_bits())));
  }
}
static void c10_narrow(uint16_t* f2h, uint16_t* f2b, const uint32_t* in, long n) {
  for (long i = 0; i < n; ++i) {
    f2h[i] = c10::Half(bits_as<float>(in[i])).x;
    f2b[i] = c10::BFloat16(bits_as<float>(in[i])).x;
  }
}

template <typename E>
static std::vector<E> read_all(const char* path) {
  std::vector<E> v;
  FILE* f = std::fopen(path, "rb");
  if (!f) return v;
  E e;
  while (std::fread(&e, sizeof e, 1, f) == 1) v.push_back(e);
  std::fclose(f);
  return v;
}

template <typename E>
static void write_all(const std::string& path, const std::vector<E>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(v.data(), sizeof(E), v.size(), f);
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const std::vector<uint16_t> in16 = read_all<uint16_t>(argv[1]);
  const std::vector<uint32_t> in32 = read_all<uint32_t>(argv[2]);
  const long n16 = (long)in16.size(), n32 = (long)in32.size();
  std::vector<uint32_t> h2f(n16), b2f(n16);
  std::vector<uint16_t> f2h(n32), f2b(n32);
  std::vector<float> e(n32);
  std::vector<double> ed(n32);
  auto run = [&](const char* isa, auto widen, auto narrow, auto exp, auto log) {
    widen(h2f.data(), b2f.data(), in16.data(), n16);
    narrow(f2h.data(), f2b.data(), in32.data(), n32);
    const std::string out = std::string(argv[3]) + "." + isa;
    write_all(out + ".h2f", h2f);
    write_all(out + ".b2f", b2f);
    write_all(out + ".f2h", f2h);
    write_all(out + ".f2b", f2b);
    if (exp) {
      exp(e.data(), ed.data(), in32.data(), n32);
      write_all(out + ".exp", e);
      write_all(out + ".expd", ed);
      log(e.data(), ed.data(), in32.data(), n32);
      write_all(out + ".log", e);
      write_all(out + ".logd", ed);
    }
    std::printf("%s\n", isa);
  };
  run("c10", c10_widen, c10_narrow, (decltype(&base_exp)) nullptr, (decltype(&base_log)) nullptr);
  run("base", base_widen, base_narrow, base_exp, base_log);
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    run("v3", v3_widen, v3_narrow, v3_exp, v3_log);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    run("v4", v4_widen, v4_narrow, v4_exp, v4_log);
#endif
  return 0;
}

// main() of the gpu suite's test executables: where no CUDA device is
// visible, one line says why and the executable exits 77 (meson's "skipped"),
// so a machine without a GPU reports SKIP, not a pass and not a failure.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  bool listing = false;  // --gtest_list_tests works without a device
  for (int i = 1; i < argc; ++i) listing |= std::strncmp(argv[i], "--gtest_list_tests", 18) == 0;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (!listing && (e != cudaSuccess || count == 0)) {
    std::printf("SKIP %s: no CUDA device (%s)\n", argc > 0 ? argv[0] : "gpu test",
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

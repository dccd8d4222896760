// What build_info() reports about the compiled extension: the stringizing macro for values
// passed as -D flags, and the CUDA facts compiled into common/cuda_info.cu (CUDA builds only).
#pragma once
#include <string>

// SIMCLR_STR(X): the expansion of macro X as a string literal. Variadic, because some values
// contain commas (nvcc's __CUDA_ARCH_LIST__ is e.g. 800,900).
#define SIMCLR_STR_(...) #__VA_ARGS__
#define SIMCLR_STR(...) SIMCLR_STR_(__VA_ARGS__)

namespace simclr_ext {

#ifdef WITH_CUDA
// The -gencode targets cuda_info.cu was compiled for, e.g. "800,900" ("unknown" if nvcc does not
// say), and the CUDA runtime version (CUDART_VERSION) it was compiled against.
std::string cuda_arch_list();
int cuda_runtime_version_built();
#endif

}  // namespace simclr_ext

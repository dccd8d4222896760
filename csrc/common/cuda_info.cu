// Facts about the CUDA side of this build, for build_info(): compiled only in CUDA builds.
#include <cuda_runtime_api.h>

#include <string>

#include "common/build_info.h"

namespace simclr_ext {

// nvcc defines __CUDA_ARCH_LIST__ (e.g. "800,900") for every -gencode target of this file.
std::string cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return SIMCLR_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

int cuda_runtime_version_built() { return CUDART_VERSION; }

}  // namespace simclr_ext

// The C ABI that rust/core/src/model/aoti.rs calls to run AOTInductor packages (`.pt2`).
//
// libtorch exports torch::inductor::AOTIModelPackageLoader as C++ only. Like tch's
// torch-sys/libtch, every function here catches every C++ exception and returns it as a
// malloc'd message (NULL = success), so no exception ever crosses into Rust. Tensors cross as
// `at::Tensor*`, the same representation tch uses for its `C_tensor`.

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

using torch::inductor::AOTIModelPackageLoader;

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

}  // namespace

#define TS_TRY(body)                               \
  try {                                            \
    body                                           \
    return nullptr;                                \
  } catch (const std::exception& e) {              \
    return dup(e.what());                          \
  } catch (...) {                                  \
    return dup("unknown C++ exception");           \
  }

extern "C" {

// `path` is a package's folder, unpacked by aoti.rs (the loader's unpacked-package mode, in
// which it extracts and removes nothing: aoti.rs owns the folder).
char* ts_aoti_load(const char* path, const char* model_name, size_t num_runners,
                   int device_index, AOTIModelPackageLoader** out) {
  TS_TRY({
    *out = nullptr;
    *out = new AOTIModelPackageLoader(path, model_name, /*run_single_threaded=*/false,
                                      num_runners,
                                      static_cast<c10::DeviceIndex>(device_index));
  })
}

// Runs the package on one input; `*outputs` is a malloc'd array of `*n_outputs` new
// at::Tensor* (the caller owns each tensor and frees the array with ts_aoti_free).
char* ts_aoti_run(AOTIModelPackageLoader* loader, const at::Tensor* const* input,
                  size_t n_inputs, at::Tensor*** outputs, size_t* n_outputs) {
  TS_TRY({
    *outputs = nullptr;
    *n_outputs = 0;
    std::vector<at::Tensor> inputs;
    inputs.reserve(n_inputs);
    for (size_t i = 0; i < n_inputs; ++i) inputs.push_back(*input[i]);
    std::vector<at::Tensor> result = loader->run(inputs);
    auto** array = static_cast<at::Tensor**>(std::malloc(sizeof(at::Tensor*) * (result.size() + 1)));
    if (array == nullptr) throw std::bad_alloc();
    for (size_t i = 0; i < result.size(); ++i) {
      array[i] = new at::Tensor(std::move(result[i]));
    }
    *outputs = array;
    *n_outputs = result.size();
  })
}

void ts_aoti_delete(AOTIModelPackageLoader* loader) {
  try {
    delete loader;
  } catch (...) {
  }
}

void ts_aoti_free(void* p) { std::free(p); }

}  // extern "C"

// torchvision's CPU `nms`, for scripted torchvision detectors (rust/core/src/model/vision_ops.rs).
//
// A scripted detector calls `torchvision::nms`, which plain libtorch lacks ("Unknown builtin op").
// torchvision's own _C.so links libtorch_python, so an executor JVM cannot load it. This is the
// same kernel as torchvision/csrc/ops/cpu/nms_kernel.cpp (same checks, stable descending sort of
// the scores, IoU > threshold suppresses, int64 keep indices in score order), registered at run
// time, and only when the dispatcher does not have the op already (torchvision imported first).
// Errors come back as a malloc'd message (NULL = success), as in aoti_bridge.cpp.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

template <typename scalar_t>
at::Tensor nms_impl(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(!dets.is_cuda(), "dets must be a CPU tensor");
  TORCH_CHECK(!scores.is_cuda(), "scores must be a CPU tensor");
  TORCH_CHECK(dets.scalar_type() == scores.scalar_type(),
              "dets should have the same type as scores");
  if (dets.numel() == 0) {
    return at::empty({0}, dets.options().dtype(at::kLong));
  }
  auto x1_t = dets.select(1, 0).contiguous();
  auto y1_t = dets.select(1, 1).contiguous();
  auto x2_t = dets.select(1, 2).contiguous();
  auto y2_t = dets.select(1, 3).contiguous();
  at::Tensor areas_t = (x2_t - x1_t) * (y2_t - y1_t);
  // Stable: boxes of equal score keep their input order, as in torchvision.
  auto order_t = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));

  const int64_t n = dets.size(0);
  at::Tensor suppressed_t = at::zeros({n}, dets.options().dtype(at::kByte));
  at::Tensor keep_t = at::zeros({n}, dets.options().dtype(at::kLong));
  auto suppressed = suppressed_t.data_ptr<uint8_t>();
  auto keep = keep_t.data_ptr<int64_t>();
  auto order = order_t.data_ptr<int64_t>();
  auto x1 = x1_t.data_ptr<scalar_t>();
  auto y1 = y1_t.data_ptr<scalar_t>();
  auto x2 = x2_t.data_ptr<scalar_t>();
  auto y2 = y2_t.data_ptr<scalar_t>();
  auto areas = areas_t.data_ptr<scalar_t>();

  int64_t kept = 0;
  for (int64_t a = 0; a < n; a++) {
    const int64_t i = order[a];
    if (suppressed[i] == 1) continue;
    keep[kept++] = i;
    for (int64_t b = a + 1; b < n; b++) {
      const int64_t j = order[b];
      if (suppressed[j] == 1) continue;
      // In scalar_t, operation for operation as torchvision: the same IoU to the last bit.
      auto w = std::max(static_cast<scalar_t>(0), std::min(x2[i], x2[j]) - std::max(x1[i], x1[j]));
      auto h = std::max(static_cast<scalar_t>(0), std::min(y2[i], y2[j]) - std::max(y1[i], y1[j]));
      auto inter = w * h;
      auto iou = inter / (areas[i] + areas[j] - inter);
      if (iou > iou_threshold) suppressed[j] = 1;
    }
  }
  return keep_t.narrow(/*dim=*/0, /*start=*/0, /*length=*/kept);
}

at::Tensor nms_kernel(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.dim() == 2, "boxes should be a 2d tensor, got ", dets.dim(), "D");
  TORCH_CHECK(dets.size(1) == 4, "boxes should have 4 elements in dimension 1, got ",
              dets.size(1));
  TORCH_CHECK(scores.dim() == 1, "scores should be a 1d tensor, got ", scores.dim(), "D");
  TORCH_CHECK(dets.size(0) == scores.size(0),
              "boxes and scores should have same number of elements in dimension 0, got ",
              dets.size(0), " and ", scores.size(0));
  auto result = at::empty({0}, dets.options());
  AT_DISPATCH_FLOATING_TYPES(dets.scalar_type(), "nms_kernel", [&] {
    result = nms_impl<scalar_t>(dets, scores, iou_threshold);
  });
  return result;
}

// Scripted torchvision models also reference this op (box_iou with rotated boxes, only on
// training paths): TorchScript resolves every op when it loads, so its schema must exist.
at::Tensor box_iou_rotated_kernel(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false,
              "torchvision::box_iou_rotated is not available in torchspark, which provides "
              "torchvision's nms only (rotated boxes appear on detectors' training paths)");
}

bool has_op(const char* name) {
  return c10::Dispatcher::singleton().findSchema(c10::OperatorName(name, "")).has_value();
}

std::mutex registering;

}  // namespace

extern "C" {

// Registers torchvision::nms (CPU) and the schema of box_iou_rotated, each unless the
// dispatcher already has it. Idempotent.
char* ts_vision_ops_register() {
  try {
    std::lock_guard<std::mutex> lock(registering);
    const bool nms = !has_op("torchvision::nms");
    const bool iou = !has_op("torchvision::box_iou_rotated");
    if (!nms && !iou) {
      return nullptr;
    }
    // Never freed: the dispatcher keeps pointing into the library for the process's life.
    auto* lib = new torch::Library(torch::Library::FRAGMENT, "torchvision", std::nullopt,
                                   __FILE__, __LINE__);
    if (nms) {
      // torchvision's schema, word for word.
      lib->def("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
      lib->impl("nms", torch::dispatch(c10::DispatchKey::CPU, TORCH_FN(nms_kernel)));
    }
    if (iou) {
      lib->def("box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor");
      lib->impl("box_iou_rotated",
                torch::dispatch(c10::DispatchKey::CPU, TORCH_FN(box_iou_rotated_kernel)));
    }
    return nullptr;
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception");
  }
}

void ts_vision_ops_free(void* p) { std::free(p); }

}  // extern "C"

// Python binding of the plugin's DCNv2 CUDA launcher, for the kernel check.
//
// converters/plugins/kernel_check.py builds this file together with
// ../src/dcn_kernels.cu through torch.utils.cpp_extension.load and compares
// edgeseg_dcn_forward() with torchvision.ops.deform_conv2d on the GPU. It
// calls the launcher as the TensorRT plugin's enqueue() does: its own cuBLAS
// handle in CUBLAS_DEFAULT_MATH, a device workspace of edgeseg_dcn_workspace()
// bytes, the caller's stream. No TensorRT header, and no torch header either
// (pybind11 only, which torch ships): tensors travel as device pointers that
// the Python side takes from torch tensors it has checked, so the binding
// compiles in seconds and any CUDA machine with a CUDA build of torch runs it.
#include "dcn_kernels.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace
{

constexpr size_t kParamCount = sizeof(edgeseg::DcnParams) / sizeof(int32_t);
static_assert(kParamCount == 19, "DcnParams changed: update kernel_check.py's PARAM_FIELDS");

// The 19 int32 fields of DcnParams, in declaration order (kernel_check.PARAM_FIELDS).
edgeseg::DcnParams to_params(std::vector<int64_t> const& values)
{
    if (values.size() != kParamCount)
    {
        throw std::invalid_argument(
            "params must hold " + std::to_string(kParamCount) + " integers, got " + std::to_string(values.size()));
    }
    int32_t fields[kParamCount];
    for (size_t i = 0; i < kParamCount; ++i)
    {
        if (values[i] < INT32_MIN || values[i] > INT32_MAX)
        {
            throw std::invalid_argument("params[" + std::to_string(i) + "] does not fit in int32");
        }
        fields[i] = static_cast<int32_t>(values[i]);
    }
    edgeseg::DcnParams p{};
    static_assert(sizeof(p) == sizeof(fields), "DcnParams is not 19 packed int32 fields");
    std::memcpy(&p, fields, sizeof(p));
    return p;
}

edgeseg::DcnDataType to_type(int32_t type)
{
    if (type == static_cast<int32_t>(edgeseg::DcnDataType::kFloat32))
    {
        return edgeseg::DcnDataType::kFloat32;
    }
    if (type == static_cast<int32_t>(edgeseg::DcnDataType::kFloat16))
    {
        return edgeseg::DcnDataType::kFloat16;
    }
    throw std::invalid_argument("dtype must be 0 (float32) or 1 (float16), got " + std::to_string(type));
}

// One cuBLAS handle per device, made on first use and kept for the process
// (the plugin keeps one per execution context).
cublasHandle_t cublas_handle()
{
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess)
    {
        throw std::runtime_error("cudaGetDevice failed: no CUDA device");
    }
    static std::mutex lock;
    static std::unordered_map<int, cublasHandle_t> handles;
    std::lock_guard<std::mutex> const guard(lock);
    auto const found = handles.find(device);
    if (found != handles.end())
    {
        return found->second;
    }
    cublasHandle_t handle = nullptr;
    cublasStatus_t const status = cublasCreate(&handle);
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        throw std::runtime_error("cublasCreate failed with status " + std::to_string(static_cast<int>(status)));
    }
    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
    handles.emplace(device, handle);
    return handle;
}

void const* pointer(std::uintptr_t address)
{
    return reinterpret_cast<void const*>(address);
}

int32_t forward(std::vector<int64_t> const& params, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t offset,
    std::uintptr_t mask, std::uintptr_t bias, std::uintptr_t y, std::uintptr_t workspace, int32_t dtype,
    std::uintptr_t stream)
{
    edgeseg::DcnParams const p = to_params(params);
    edgeseg::DcnDataType const type = to_type(dtype);
    return edgeseg::edgeseg_dcn_forward(p, pointer(x), pointer(weight), pointer(offset), pointer(mask), pointer(bias),
        reinterpret_cast<void*>(y), reinterpret_cast<void*>(workspace), type, reinterpret_cast<cudaStream_t>(stream),
        cublas_handle());
}

size_t workspace_bytes(std::vector<int64_t> const& params, int32_t dtype)
{
    return edgeseg::edgeseg_dcn_workspace(to_params(params), to_type(dtype));
}

int32_t check_params(std::vector<int64_t> const& params)
{
    return edgeseg::dcn_check_params(to_params(params));
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "edgeseg's DCNv2 CUDA launcher (converters/plugins/src/dcn_kernels.cu), for the kernel check";
    m.def("forward", &forward,
        "Enqueues edgeseg_dcn_forward on `stream` with device pointers (0 for no mask / bias); returns its "
        "DcnStatus (0 = ok)",
        py::arg("params"), py::arg("x"), py::arg("weight"), py::arg("offset"), py::arg("mask"), py::arg("bias"),
        py::arg("y"), py::arg("workspace"), py::arg("dtype"), py::arg("stream"));
    m.def("workspace_bytes", &workspace_bytes, "edgeseg_dcn_workspace: device bytes forward needs",
        py::arg("params"), py::arg("dtype"));
    m.def("check_params", &check_params, "dcn_check_params: 0 when the params are consistent", py::arg("params"));
    m.def("status_string", &edgeseg::edgeseg_dcn_status_string, "A DcnStatus in words", py::arg("status"));
    m.attr("PARAM_COUNT") = kParamCount;
}

// CUDA launcher of the modulated deformable convolution: deformable im2col
// into a column buffer, a cuBLAS GEMM per image (strided-batched over the
// convolution groups), then the bias.
//
// Needs only the CUDA toolkit (runtime + cuBLAS headers), no TensorRT, so CI
// can `nvcc -c` dcn_kernels.cu on a machine without TensorRT.
#ifndef EDGESEG_DCN_KERNELS_H
#define EDGESEG_DCN_KERNELS_H

#include "dcn_common.cuh"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace edgeseg
{

//! Element type of every input and output of one call (all the same).
enum class DcnDataType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! Bytes of device workspace that edgeseg_dcn_forward needs: one image's column
//! matrix (C * kH * kW x oH * oW elements), rounded up to 256 bytes.
size_t edgeseg_dcn_workspace(DcnParams const& params, DcnDataType type);

//! Enqueues y = deform_conv2d(x, w, offset, mask, bias) on `stream`.
//!
//! All pointers are device pointers to NCHW tensors of `type` (see
//! dcn_common.cuh for the shapes); mask and bias may be null (ones / zeros).
//! `workspace` holds at least edgeseg_dcn_workspace() bytes. The cuBLAS handle
//! is bound to `stream` here. FP16 runs its GEMM with FP32 accumulation.
//!
//! \return a DcnStatus: 0 on success; kDcnInvalidParams, kDcnNullPointer,
//!         kDcnCudaError (launch failure), kDcnCublasError, kDcnUnsupportedType.
int32_t edgeseg_dcn_forward(DcnParams const& params, void const* x, void const* w, void const* offset,
    void const* mask, void const* bias, void* y, void* workspace, DcnDataType type, cudaStream_t stream,
    cublasHandle_t cublas);

//! A short English description of a DcnStatus value.
char const* edgeseg_dcn_status_string(int32_t status);

} // namespace edgeseg

#endif // EDGESEG_DCN_KERNELS_H

// CUDA kernels of the modulated deformable convolution (FP32 and FP16).
//
// Per image: one kernel fills the column matrix (C * kH * kW, oH * oW) through
// dcn_column_value() from dcn_common.cuh (the arithmetic the CPU twin tests),
// then one strided-batched cuBLAS GEMM multiplies every group's weight block
// with its column block. The bias is added by a last kernel over the output.
// The column buffer is reused image after image: all work is ordered on one
// stream, so no image overwrites columns another still reads.
#include "dcn_kernels.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>

namespace edgeseg
{
namespace
{

constexpr int32_t kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20; // grid-stride loops cover the rest

__device__ inline void store(float* dst, float v)
{
    *dst = v;
}

__device__ inline void store(__half* dst, float v)
{
    *dst = __float2half_rn(v);
}

int32_t blocks_for(int64_t total)
{
    int64_t const blocks = (total + kThreads - 1) / kThreads;
    return static_cast<int32_t>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T>
__global__ void deformable_im2col_kernel(
    DcnParams p, T const* x, T const* offset, T const* mask, int32_t n, T* columns, int64_t total)
{
    int64_t const cols = dcn_column_cols(p);
    int64_t const step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step)
    {
        int64_t const row = idx / cols;
        int64_t const pos = idx - row * cols;
        store(columns + idx, dcn_column_value(p, x, offset, mask, n, row, pos));
    }
}

template <typename T>
__global__ void add_bias_kernel(T* y, T const* bias, int32_t channels, int64_t plane, int64_t total)
{
    int64_t const step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step)
    {
        int32_t const m = static_cast<int32_t>((idx / plane) % channels);
        store(y + idx, to_float(y[idx]) + to_float(bias[m]));
    }
}

size_t element_size(DcnDataType type)
{
    return type == DcnDataType::kFloat16 ? sizeof(__half) : sizeof(float);
}

// y_n (M, P) = W (M, Cg*K) x columns (C*K, P), group by group. cuBLAS is
// column-major: a row-major (r, c) matrix is its (c, r) transpose there, so
// we ask for y^T = columns^T x W^T with the operands swapped.
int32_t gemm_groups(DcnParams const& p, void const* w, void const* columns, void* y_n, DcnDataType type,
    cublasHandle_t cublas)
{
    int64_t const cols = dcn_column_cols(p);
    int64_t const k = static_cast<int64_t>(p.in_channels / p.group) * p.kernel_h * p.kernel_w;
    int64_t const mg = p.out_channels / p.group;
    if (cols > INT_MAX || k > INT_MAX || mg > INT_MAX)
    {
        return kDcnInvalidParams;
    }
    long long const stride_a = static_cast<long long>(k * cols); // column block of one group
    long long const stride_b = static_cast<long long>(mg * k);   // weight block of one group
    long long const stride_c = static_cast<long long>(mg * cols); // output block of one group
    float const alpha = 1.0f;
    float const beta = 0.0f;
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    if (type == DcnDataType::kFloat32)
    {
        status = cublasSgemmStridedBatched(cublas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols),
            static_cast<int>(mg), static_cast<int>(k), &alpha, static_cast<float const*>(columns),
            static_cast<int>(cols), stride_a, static_cast<float const*>(w), static_cast<int>(k), stride_b, &beta,
            static_cast<float*>(y_n), static_cast<int>(cols), stride_c, p.group);
    }
    else
    {
        status = cublasGemmStridedBatchedEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols),
            static_cast<int>(mg), static_cast<int>(k), &alpha, columns, CUDA_R_16F, static_cast<int>(cols), stride_a,
            w, CUDA_R_16F, static_cast<int>(k), stride_b, &beta, y_n, CUDA_R_16F, static_cast<int>(cols), stride_c,
            p.group, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    return status == CUBLAS_STATUS_SUCCESS ? kDcnOk : kDcnCublasError;
}

template <typename T>
int32_t forward_typed(DcnParams const& p, T const* x, void const* w, T const* offset, T const* mask, T const* bias,
    T* y, T* columns, DcnDataType type, cudaStream_t stream, cublasHandle_t cublas)
{
    int64_t const rows = dcn_column_rows(p);
    int64_t const cols = dcn_column_cols(p);
    int64_t const total = rows * cols;
    int64_t const out_image = static_cast<int64_t>(p.out_channels) * cols;
    for (int32_t n = 0; n < p.batch; ++n)
    {
        deformable_im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(p, x, offset, mask, n, columns, total);
        if (cudaGetLastError() != cudaSuccess)
        {
            return kDcnCudaError;
        }
        int32_t const status = gemm_groups(p, w, columns, y + n * out_image, type, cublas);
        if (status != kDcnOk)
        {
            return status;
        }
    }
    if (bias != nullptr)
    {
        int64_t const out_total = static_cast<int64_t>(p.batch) * out_image;
        add_bias_kernel<T><<<blocks_for(out_total), kThreads, 0, stream>>>(y, bias, p.out_channels, cols, out_total);
        if (cudaGetLastError() != cudaSuccess)
        {
            return kDcnCudaError;
        }
    }
    return kDcnOk;
}

} // namespace

size_t edgeseg_dcn_workspace(DcnParams const& params, DcnDataType type)
{
    size_t const bytes = static_cast<size_t>(dcn_column_rows(params) * dcn_column_cols(params)) * element_size(type);
    return (bytes + 255) / 256 * 256;
}

int32_t edgeseg_dcn_forward(DcnParams const& params, void const* x, void const* w, void const* offset,
    void const* mask, void const* bias, void* y, void* workspace, DcnDataType type, cudaStream_t stream,
    cublasHandle_t cublas)
{
    if (x == nullptr || w == nullptr || offset == nullptr || y == nullptr || workspace == nullptr || cublas == nullptr)
    {
        return kDcnNullPointer;
    }
    if (dcn_check_params(params) != kDcnOk)
    {
        return kDcnInvalidParams;
    }
    if (cublasSetStream(cublas, stream) != CUBLAS_STATUS_SUCCESS)
    {
        return kDcnCublasError;
    }
    switch (type)
    {
    case DcnDataType::kFloat32:
        return forward_typed<float>(params, static_cast<float const*>(x), w, static_cast<float const*>(offset),
            static_cast<float const*>(mask), static_cast<float const*>(bias), static_cast<float*>(y),
            static_cast<float*>(workspace), type, stream, cublas);
    case DcnDataType::kFloat16:
        return forward_typed<__half>(params, static_cast<__half const*>(x), w, static_cast<__half const*>(offset),
            static_cast<__half const*>(mask), static_cast<__half const*>(bias), static_cast<__half*>(y),
            static_cast<__half*>(workspace), type, stream, cublas);
    }
    return kDcnUnsupportedType;
}

char const* edgeseg_dcn_status_string(int32_t status)
{
    switch (status)
    {
    case kDcnOk: return "success";
    case kDcnInvalidParams: return "inconsistent shapes or attributes";
    case kDcnNullPointer: return "a required pointer is null";
    case kDcnCudaError: return "a CUDA kernel launch failed";
    case kDcnCublasError: return "a cuBLAS call failed";
    case kDcnUnsupportedType: return "unsupported data type (FP32 and FP16 only)";
    default: return "unknown status";
    }
}

} // namespace edgeseg

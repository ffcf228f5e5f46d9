// Modulated deformable convolution (DCNv2): the arithmetic shared by the CUDA
// kernels and the CPU twin.
//
// Everything in this header is plain arithmetic on raw pointers, with no CUDA
// runtime call, so the very same functions are compiled by nvcc for the GPU
// (dcn_kernels.cu) and by the host compiler for the CPU (dcn_cpu.cpp), where
// the tests compare them with torchvision.ops.deform_conv2d.
//
// Semantics are those of ONNX DeformConv (opset 19) and of torchvision's CPU
// kernel: a sample at (h, w) with h <= -1, h >= H, w <= -1 or w >= W is 0, and
// each of the four bilinear corners that falls outside the image contributes 0.
//
// Tensor layouts (all row-major, NCHW):
//   x      (N, C, H, W)
//   weight (M, C / group, kH, kW)
//   offset (N, offset_group * 2 * kH * kW, oH, oW), (dy, dx) pairs per kernel tap
//   mask   (N, offset_group * kH * kW, oH, oW)   (nullptr: all ones)
//   bias   (M)                                   (nullptr: zeros)
//   y      (N, M, oH, oW)
// The column matrix of one image is (C * kH * kW, oH * oW): row c * K + k holds
// channel c sampled at kernel tap k = i * kW + j for every output position.
#ifndef EDGESEG_DCN_COMMON_CUH
#define EDGESEG_DCN_COMMON_CUH

#if defined(__CUDACC__)
#define EDGESEG_HD __host__ __device__
#include <cuda_fp16.h>
#else
#define EDGESEG_HD
#endif

#include <math.h>
#include <stdint.h>

namespace edgeseg
{

//! Shapes and attributes of one deformable convolution. Plain int32 fields
//! only: the Python tests mirror this struct with ctypes.
struct DcnParams
{
    int32_t batch;        //!< N
    int32_t in_channels;  //!< C
    int32_t height;       //!< H
    int32_t width;        //!< W
    int32_t out_channels; //!< M
    int32_t kernel_h;     //!< kH
    int32_t kernel_w;     //!< kW
    int32_t out_h;        //!< oH
    int32_t out_w;        //!< oW
    int32_t stride_h;
    int32_t stride_w;
    int32_t pad_top;
    int32_t pad_left;
    int32_t pad_bottom;
    int32_t pad_right;
    int32_t dilation_h;
    int32_t dilation_w;
    int32_t group;
    int32_t offset_group;
};

//! Return codes of the launchers (0 is success).
enum DcnStatus : int32_t
{
    kDcnOk = 0,
    kDcnInvalidParams = 1,
    kDcnNullPointer = 2,
    kDcnCudaError = 3,
    kDcnCublasError = 4,
    kDcnUnsupportedType = 5,
};

//! Output extent along one axis, as ONNX Conv / DeformConv define it.
EDGESEG_HD inline int32_t dcn_out_extent(
    int32_t in, int32_t pad_begin, int32_t pad_end, int32_t kernel, int32_t stride, int32_t dilation)
{
    int32_t const span = dilation * (kernel - 1) + 1;
    int32_t const padded = in + pad_begin + pad_end;
    return padded < span ? 0 : (padded - span) / stride + 1;
}

//! kDcnOk when the shapes and attributes are consistent, else kDcnInvalidParams.
inline int32_t dcn_check_params(DcnParams const& p)
{
    if (p.batch < 1 || p.in_channels < 1 || p.height < 1 || p.width < 1 || p.out_channels < 1 || p.kernel_h < 1
        || p.kernel_w < 1 || p.out_h < 1 || p.out_w < 1 || p.stride_h < 1 || p.stride_w < 1 || p.dilation_h < 1
        || p.dilation_w < 1 || p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0
        || p.group < 1 || p.offset_group < 1)
    {
        return kDcnInvalidParams;
    }
    if (p.in_channels % p.group != 0 || p.out_channels % p.group != 0 || p.in_channels % p.offset_group != 0)
    {
        return kDcnInvalidParams;
    }
    if (p.out_h != dcn_out_extent(p.height, p.pad_top, p.pad_bottom, p.kernel_h, p.stride_h, p.dilation_h)
        || p.out_w != dcn_out_extent(p.width, p.pad_left, p.pad_right, p.kernel_w, p.stride_w, p.dilation_w))
    {
        return kDcnInvalidParams;
    }
    return kDcnOk;
}

//! Rows of one image's column matrix: C * kH * kW.
EDGESEG_HD inline int64_t dcn_column_rows(DcnParams const& p)
{
    return static_cast<int64_t>(p.in_channels) * p.kernel_h * p.kernel_w;
}

//! Columns of one image's column matrix: oH * oW.
EDGESEG_HD inline int64_t dcn_column_cols(DcnParams const& p)
{
    return static_cast<int64_t>(p.out_h) * p.out_w;
}

// Loads as float. The __half overload exists only where nvcc compiles, so the
// CPU twin never sees a CUDA type.
EDGESEG_HD inline float to_float(float v)
{
    return v;
}

#if defined(__CUDACC__)
EDGESEG_HD inline float to_float(__half v)
{
    return __half2float(v);
}
#endif

//! Bilinear sample of one (H, W) plane at the fractional position (h, w),
//! accumulated in float whatever T is (float or __half).
template <typename T>
EDGESEG_HD inline float bilinear(T const* plane, int32_t H, int32_t W, float h, float w)
{
    if (h <= -1.0f || h >= static_cast<float>(H) || w <= -1.0f || w >= static_cast<float>(W))
    {
        return 0.0f;
    }
    int32_t const h_low = static_cast<int32_t>(floorf(h));
    int32_t const w_low = static_cast<int32_t>(floorf(w));
    int32_t const h_high = h_low + 1;
    int32_t const w_high = w_low + 1;

    float const lh = h - static_cast<float>(h_low);
    float const lw = w - static_cast<float>(w_low);
    float const hh = 1.0f - lh;
    float const hw = 1.0f - lw;

    bool const top = h_low >= 0;
    bool const bottom = h_high <= H - 1;
    bool const left = w_low >= 0;
    bool const right = w_high <= W - 1;
    float const v1 = (top && left) ? to_float(plane[h_low * W + w_low]) : 0.0f;
    float const v2 = (top && right) ? to_float(plane[h_low * W + w_high]) : 0.0f;
    float const v3 = (bottom && left) ? to_float(plane[h_high * W + w_low]) : 0.0f;
    float const v4 = (bottom && right) ? to_float(plane[h_high * W + w_high]) : 0.0f;

    float const w1 = hh * hw;
    float const w2 = hh * lw;
    float const w3 = lh * hw;
    float const w4 = lh * lw;
    return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

//! One element of the deformable im2col matrix of image `n`: channel c at
//! kernel tap k = i * kW + j (row = c * K + k), output position
//! pos = oy * oW + ox; the bilinear sample times the mask (1 without mask).
template <typename T>
EDGESEG_HD inline float dcn_column_value(DcnParams const& p, T const* x, T const* offset, T const* mask,
    int32_t n, int64_t row, int64_t pos)
{
    int32_t const taps = p.kernel_h * p.kernel_w;
    int32_t const c = static_cast<int32_t>(row / taps);
    int32_t const k = static_cast<int32_t>(row - static_cast<int64_t>(c) * taps);
    int32_t const i = k / p.kernel_w;
    int32_t const j = k - i * p.kernel_w;
    int32_t const oy = static_cast<int32_t>(pos / p.out_w);
    int32_t const ox = static_cast<int32_t>(pos - static_cast<int64_t>(oy) * p.out_w);
    int32_t const og = c / (p.in_channels / p.offset_group);
    int64_t const plane = static_cast<int64_t>(p.out_h) * p.out_w;

    // offset channel of dy for (og, k) is og * 2K + 2k, dx follows it
    int64_t const off_base = (static_cast<int64_t>(n) * p.offset_group + og) * 2 * taps;
    float const dy = to_float(offset[(off_base + 2 * k) * plane + pos]);
    float const dx = to_float(offset[(off_base + 2 * k + 1) * plane + pos]);
    float m = 1.0f;
    if (mask != nullptr)
    {
        int64_t const mask_base = (static_cast<int64_t>(n) * p.offset_group + og) * taps;
        m = to_float(mask[(mask_base + k) * plane + pos]);
    }
    // integer part first, then the offset, as torchvision computes it
    float const y = static_cast<float>(oy * p.stride_h - p.pad_top + i * p.dilation_h) + dy;
    float const xs = static_cast<float>(ox * p.stride_w - p.pad_left + j * p.dilation_w) + dx;
    T const* image = x + (static_cast<int64_t>(n) * p.in_channels + c) * p.height * p.width;
    return m * bilinear(image, p.height, p.width, y, xs);
}

} // namespace edgeseg

#endif // EDGESEG_DCN_COMMON_CUH

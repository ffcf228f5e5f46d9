// CPU twin of the deformable-convolution kernels (float32 only).
//
// Samples through dcn_common.cuh, the header the CUDA kernels compile, so the
// tests exercise the same sampling arithmetic as the GPU; the GEMM is plain
// loops accumulating in float, like cuBLAS's FP32 compute. Built by the tests
// with `g++ -O2 -std=c++17 -shared -fPIC` and called through ctypes; not part
// of the plugin library.
#include "dcn_common.cuh"

#include <vector>

using edgeseg::DcnParams;

extern "C"
{

//! sizeof(DcnParams), so a caller can check that its mirror of the struct matches.
int32_t edgeseg_dcn_params_size()
{
    return static_cast<int32_t>(sizeof(DcnParams));
}

//! y = deform_conv2d(x, weight, offset, mask, bias) for float32 NCHW arrays.
//! mask and bias may be null (ones, zeros). Returns a DcnStatus (0 = ok).
int32_t edgeseg_dcn_cpu_forward(DcnParams const* params, float const* x, float const* weight, float const* offset,
    float const* mask, float const* bias, float* y)
{
    if (params == nullptr || x == nullptr || weight == nullptr || offset == nullptr || y == nullptr)
    {
        return edgeseg::kDcnNullPointer;
    }
    DcnParams const& p = *params;
    if (edgeseg::dcn_check_params(p) != edgeseg::kDcnOk)
    {
        return edgeseg::kDcnInvalidParams;
    }
    int64_t const rows = edgeseg::dcn_column_rows(p);
    int64_t const cols = edgeseg::dcn_column_cols(p);
    int32_t const taps = p.kernel_h * p.kernel_w;
    int64_t const rows_per_group = static_cast<int64_t>(p.in_channels / p.group) * taps;
    int32_t const out_per_group = p.out_channels / p.group;

    std::vector<float> columns(static_cast<size_t>(rows * cols));
    std::vector<float> acc(static_cast<size_t>(cols));
    for (int32_t n = 0; n < p.batch; ++n)
    {
        for (int64_t r = 0; r < rows; ++r)
        {
            for (int64_t q = 0; q < cols; ++q)
            {
                columns[r * cols + q] = edgeseg::dcn_column_value(p, x, offset, mask, n, r, q);
            }
        }
        for (int32_t g = 0; g < p.group; ++g)
        {
            for (int32_t mo = 0; mo < out_per_group; ++mo)
            {
                int32_t const m = g * out_per_group + mo;
                float const* wrow = weight + static_cast<int64_t>(m) * rows_per_group;
                float const* block = columns.data() + g * rows_per_group * cols;
                for (int64_t q = 0; q < cols; ++q)
                {
                    acc[q] = 0.0f;
                }
                for (int64_t r = 0; r < rows_per_group; ++r)
                {
                    float const wv = wrow[r];
                    float const* crow = block + r * cols;
                    for (int64_t q = 0; q < cols; ++q)
                    {
                        acc[q] += wv * crow[q];
                    }
                }
                float const b = bias != nullptr ? bias[m] : 0.0f;
                float* out = y + (static_cast<int64_t>(n) * p.out_channels + m) * cols;
                for (int64_t q = 0; q < cols; ++q)
                {
                    out[q] = acc[q] + b;
                }
            }
        }
    }
    return edgeseg::kDcnOk;
}

} // extern "C"

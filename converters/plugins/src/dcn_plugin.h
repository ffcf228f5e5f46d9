// TensorRT IPluginV3 plugin "EdgesegDeformConv" (version "1", namespace
// "edgeseg"): ONNX DeformConv (opset 19) with FP32 or FP16 I/O, dynamic shapes.
//
// Inputs, in ONNX DeformConv order (edgeseg's ONNX pass always supplies all
// five): X (N, C, H, W), W (M, C/group, kH, kW), offset (N, og*2*kH*kW, oH, oW),
// B (M), mask (N, og*kH*kW, oH, oW). One output Y (N, M, oH, oW). Linear
// format, every tensor of the same type (FP32 or FP16).
//
// Fields (PluginFieldCollection, INT32 or INT64): strides (2), pads (4: top,
// left, bottom, right), dilations (2), group (1), offset_group (1); the
// ONNX attribute names, so onnx-tensorrt's fallback importer maps the node's
// attributes onto them.
//
// The library registers nothing when it is loaded: TensorRT's
// IPluginRegistry::loadLibrary (Python: trt.get_plugin_registry().load_library)
// and trtexec --dynamicPlugins call the exported getCreators() and
// setLoggerFinder() (see the bottom of dcn_plugin.cpp).
//
// Compiles against the TensorRT 10.x (>= 10.3) and 11.x headers.
#ifndef EDGESEG_DCN_PLUGIN_H
#define EDGESEG_DCN_PLUGIN_H

#include "dcn_kernels.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace edgeseg
{

//! The plugin's creation-time attributes (ONNX DeformConv's, kernel_shape aside:
//! the kernel comes from W's shape).
struct DeformConvAttributes
{
    int32_t strides[2]{1, 1};
    int32_t pads[4]{0, 0, 0, 0}; //!< top, left, bottom, right
    int32_t dilations[2]{1, 1};
    int32_t group{1};
    int32_t offset_group{1};

    //! An empty string when every value is in range, else what is wrong.
    std::string validate() const;
};

class DeformConvPlugin final : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kNbInputs = 5;
    enum Input : int32_t
    {
        kX = 0,
        kWeight = 1,
        kOffset = 2,
        kBias = 3,
        kMask = 4
    };

    DeformConvPlugin(std::string name, DeformConvAttributes const& attributes);
    DeformConvPlugin(DeformConvPlugin const&) = delete;
    DeformConvPlugin& operator=(DeformConvPlugin const&) = delete;
    ~DeformConvPlugin() override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Shapes from X, W and Y plus the attributes; kDcnOk or kDcnInvalidParams
    //! (with the reason logged) when the five inputs do not fit together.
    int32_t makeParams(nvinfer1::Dims const* inputs, nvinfer1::Dims const& output, DcnParams& params) const;
    bool ensureCublas() noexcept;

    std::string mName;
    DeformConvAttributes mAttributes;
    cublasHandle_t mCublas{nullptr}; //!< owned; one per plugin instance (per execution context)
    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

class DeformConvPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    DeformConvPluginCreator();

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace edgeseg

// TENSORRTAPI exports only while TensorRT builds itself; the library is built
// with hidden visibility, so its entry points say so explicitly.
#if defined(_MSC_VER)
#define EDGESEG_PLUGIN_EXPORT __declspec(dllexport)
#else
#define EDGESEG_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

//! Entry points of a TensorRT plugin shared library (IPluginRegistry::loadLibrary).
extern "C" EDGESEG_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" EDGESEG_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

#endif // EDGESEG_DCN_PLUGIN_H

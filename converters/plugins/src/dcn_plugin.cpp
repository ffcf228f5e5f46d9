// TensorRT IPluginV3 plugin "EdgesegDeformConv": see dcn_plugin.h.
#include "dcn_plugin.h"

#include <cstring>
#include <limits>
#include <exception>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <utility>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimensionOperation;
using nvinfer1::IDimensionExpr;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

namespace edgeseg
{
namespace
{

constexpr char const* kPluginName = "EdgesegDeformConv";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "edgeseg";
constexpr int32_t kOk = 0;
constexpr int32_t kFailure = 1;

// The logger TensorRT hands over through setLoggerFinder(); stderr before that.
class LoggerFinderHolder
{
public:
    void set(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
        {
            mFinder = finder;
        }
    }

    void log(nvinfer1::ILogger::Severity severity, std::string const& message)
    {
        nvinfer1::ILogger* logger = nullptr;
        {
            std::lock_guard<std::mutex> lock(mMutex);
            logger = mFinder != nullptr ? mFinder->findLogger() : nullptr;
        }
        std::string const text = std::string(kPluginName) + ": " + message;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::cerr << text << std::endl;
        }
    }

private:
    std::mutex mMutex;
    nvinfer1::ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder& loggerFinder()
{
    static LoggerFinderHolder holder;
    return holder;
}

void logError(std::string const& message) noexcept
{
    try
    {
        loggerFinder().log(nvinfer1::ILogger::Severity::kERROR, message);
    }
    catch (...) // NOLINT: logging must never throw out of a noexcept TensorRT callback
    {
    }
}

void logWarning(std::string const& message) noexcept
{
    try
    {
        loggerFinder().log(nvinfer1::ILogger::Severity::kWARNING, message);
    }
    catch (...) // NOLINT: see logError
    {
    }
}

std::string dimsToString(Dims const& dims)
{
    std::ostringstream out;
    out << "(";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        out << (i ? ", " : "") << dims.d[i];
    }
    out << ")";
    return out.str();
}

// Copies an INT32 or INT64 field of `count` values into `dst`; false (and a
// logged reason) when the field has another type or length.
bool readInts(PluginField const& field, int32_t* dst, int32_t count)
{
    if (field.length != count || field.data == nullptr)
    {
        logError(std::string("field '") + field.name + "' needs " + std::to_string(count) + " value(s), got "
            + std::to_string(field.length));
        return false;
    }
    for (int32_t i = 0; i < count; ++i)
    {
        if (field.type == PluginFieldType::kINT32)
        {
            dst[i] = static_cast<int32_t const*>(field.data)[i];
        }
        else if (field.type == PluginFieldType::kINT64)
        {
            int64_t const v = static_cast<int64_t const*>(field.data)[i];
            if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
            {
                logError(std::string("field '") + field.name + "' is out of the int32 range");
                return false;
            }
            dst[i] = static_cast<int32_t>(v);
        }
        else
        {
            logError(std::string("field '") + field.name + "' must be INT32 or INT64");
            return false;
        }
    }
    return true;
}

bool isSupportedType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

} // namespace

std::string DeformConvAttributes::validate() const
{
    if (strides[0] < 1 || strides[1] < 1)
    {
        return "strides must be >= 1";
    }
    if (dilations[0] < 1 || dilations[1] < 1)
    {
        return "dilations must be >= 1";
    }
    if (pads[0] < 0 || pads[1] < 0 || pads[2] < 0 || pads[3] < 0)
    {
        return "pads must be >= 0";
    }
    if (group < 1 || offset_group < 1)
    {
        return "group and offset_group must be >= 1";
    }
    return {};
}

// ---------------------------------------------------------------- plugin

DeformConvPlugin::DeformConvPlugin(std::string name, DeformConvAttributes const& attributes)
    : mName(std::move(name))
    , mAttributes(attributes)
{
}

DeformConvPlugin::~DeformConvPlugin()
{
    if (mCublas != nullptr)
    {
        cublasDestroy(mCublas);
        mCublas = nullptr;
    }
}

nvinfer1::IPluginCapability* DeformConvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* DeformConvPlugin::clone() noexcept
{
    try
    {
        // The cuBLAS handle is not shared: each instance creates its own.
        return new DeformConvPlugin(mName, mAttributes);
    }
    catch (std::exception const& err)
    {
        logError(std::string("clone failed: ") + err.what());
    }
    return nullptr;
}

char const* DeformConvPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DeformConvPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DeformConvPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t DeformConvPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t DeformConvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != 1)
    {
        logError(mName + ": expects 5 inputs (X, W, offset, B, mask) and 1 output, got " + std::to_string(nbInputs)
            + " and " + std::to_string(nbOutputs));
        return kFailure;
    }
    int32_t const ranks[kNbInputs] = {4, 4, 4, 1, 4};
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        if (in[i].desc.dims.nbDims != ranks[i])
        {
            logError(mName + ": input " + std::to_string(i) + " has rank " + std::to_string(in[i].desc.dims.nbDims)
                + ", expected " + std::to_string(ranks[i]));
            return kFailure;
        }
    }
    return kOk;
}

int32_t DeformConvPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != kNbInputs)
    {
        return kFailure;
    }
    outputTypes[0] = inputTypes[kX];
    return kOk;
}

int32_t DeformConvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNbInputs || nbOutputs != 1
        || inputs[kX].nbDims != 4 || inputs[kWeight].nbDims != 4)
    {
        logError(mName + ": getOutputShapes needs X and W of rank 4 and 5 inputs");
        return kFailure;
    }
    // o = floor((in + pad_begin + pad_end - (dilation * (k - 1) + 1)) / stride) + 1
    auto extent = [&exprBuilder](IDimensionExpr const& in, IDimensionExpr const& kernel, int32_t padBegin,
                      int32_t padEnd, int32_t stride, int32_t dilation) -> IDimensionExpr const* {
        IDimensionExpr const* one = exprBuilder.constant(1);
        IDimensionExpr const* taps = exprBuilder.operation(DimensionOperation::kSUB, kernel, *one);
        IDimensionExpr const* span = exprBuilder.operation(DimensionOperation::kSUM,
            *exprBuilder.operation(DimensionOperation::kPROD, *taps, *exprBuilder.constant(dilation)), *one);
        IDimensionExpr const* padded
            = exprBuilder.operation(DimensionOperation::kSUM, in, *exprBuilder.constant(padBegin + padEnd));
        IDimensionExpr const* room = exprBuilder.operation(DimensionOperation::kSUB, *padded, *span);
        IDimensionExpr const* steps
            = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *room, *exprBuilder.constant(stride));
        return exprBuilder.operation(DimensionOperation::kSUM, *steps, *one);
    };
    DeformConvAttributes const& a = mAttributes;
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[kX].d[0];
    outputs[0].d[1] = inputs[kWeight].d[0];
    outputs[0].d[2] = extent(*inputs[kX].d[2], *inputs[kWeight].d[2], a.pads[0], a.pads[2], a.strides[0],
        a.dilations[0]);
    outputs[0].d[3] = extent(*inputs[kX].d[3], *inputs[kWeight].d[3], a.pads[1], a.pads[3], a.strides[1],
        a.dilations[1]);
    for (int32_t i = 2; i < 4; ++i)
    {
        if (outputs[0].d[i] == nullptr)
        {
            return kFailure;
        }
    }
    return kOk;
}

bool DeformConvPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return isSupportedType(desc.type);
    }
    // everything else (weights, bias, mask and the output too) in X's type
    return desc.type == inOut[0].desc.type;
}

size_t DeformConvPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNbInputs || nbOutputs != 1)
    {
        return 0;
    }
    // The largest problem of the profile: the column matrix of one image.
    auto largest = [](nvinfer1::DynamicPluginTensorDesc const& t, int32_t i) -> int64_t {
        int64_t const m = t.max.nbDims > i ? t.max.d[i] : -1;
        return m > 0 ? m : t.desc.dims.d[i];
    };
    DcnParams p{};
    p.in_channels = static_cast<int32_t>(largest(inputs[kX], 1));
    p.kernel_h = static_cast<int32_t>(largest(inputs[kWeight], 2));
    p.kernel_w = static_cast<int32_t>(largest(inputs[kWeight], 3));
    p.out_h = static_cast<int32_t>(largest(outputs[0], 2));
    p.out_w = static_cast<int32_t>(largest(outputs[0], 3));
    if (p.in_channels <= 0 || p.kernel_h <= 0 || p.kernel_w <= 0 || p.out_h <= 0 || p.out_w <= 0)
    {
        return 0;
    }
    DcnDataType const type
        = inputs[kX].desc.type == DataType::kHALF ? DcnDataType::kFloat16 : DcnDataType::kFloat32;
    return edgeseg_dcn_workspace(p, type);
}

int32_t DeformConvPlugin::makeParams(Dims const* inputs, Dims const& output, DcnParams& p) const
{
    Dims const& x = inputs[kX];
    Dims const& w = inputs[kWeight];
    p.batch = static_cast<int32_t>(x.d[0]);
    p.in_channels = static_cast<int32_t>(x.d[1]);
    p.height = static_cast<int32_t>(x.d[2]);
    p.width = static_cast<int32_t>(x.d[3]);
    p.out_channels = static_cast<int32_t>(w.d[0]);
    p.kernel_h = static_cast<int32_t>(w.d[2]);
    p.kernel_w = static_cast<int32_t>(w.d[3]);
    p.out_h = static_cast<int32_t>(output.d[2]);
    p.out_w = static_cast<int32_t>(output.d[3]);
    p.stride_h = mAttributes.strides[0];
    p.stride_w = mAttributes.strides[1];
    p.pad_top = mAttributes.pads[0];
    p.pad_left = mAttributes.pads[1];
    p.pad_bottom = mAttributes.pads[2];
    p.pad_right = mAttributes.pads[3];
    p.dilation_h = mAttributes.dilations[0];
    p.dilation_w = mAttributes.dilations[1];
    p.group = mAttributes.group;
    p.offset_group = mAttributes.offset_group;
    if (dcn_check_params(p) != kDcnOk)
    {
        logError(mName + ": X " + dimsToString(x) + ", W " + dimsToString(w) + " and Y " + dimsToString(output)
            + " do not fit the attributes (group " + std::to_string(p.group) + ", offset_group "
            + std::to_string(p.offset_group) + ")");
        return kDcnInvalidParams;
    }
    int64_t const taps = static_cast<int64_t>(p.kernel_h) * p.kernel_w;
    Dims const& offset = inputs[kOffset];
    Dims const& bias = inputs[kBias];
    Dims const& mask = inputs[kMask];
    bool const ok = w.d[1] == p.in_channels / p.group && offset.d[0] == p.batch
        && offset.d[1] == p.offset_group * 2 * taps && offset.d[2] == p.out_h && offset.d[3] == p.out_w
        && bias.d[0] == p.out_channels && mask.d[0] == p.batch && mask.d[1] == p.offset_group * taps
        && mask.d[2] == p.out_h && mask.d[3] == p.out_w;
    if (!ok)
    {
        logError(mName + ": inputs do not fit together: X " + dimsToString(x) + ", W " + dimsToString(w)
            + ", offset " + dimsToString(offset) + ", B " + dimsToString(bias) + ", mask " + dimsToString(mask)
            + ", offset_group " + std::to_string(p.offset_group));
        return kDcnInvalidParams;
    }
    return kDcnOk;
}

int32_t DeformConvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != 1)
        {
            return kFailure;
        }
        Dims dims[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        DcnParams params{};
        return makeParams(dims, out[0].dims, params) == kDcnOk ? kOk : kFailure;
    }
    catch (std::exception const& err)
    {
        logError(std::string("onShapeChange failed: ") + err.what());
    }
    return kFailure;
}

bool DeformConvPlugin::ensureCublas() noexcept
{
    if (mCublas != nullptr)
    {
        return true;
    }
    cublasStatus_t const status = cublasCreate(&mCublas);
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        mCublas = nullptr;
        logError(mName + ": cublasCreate failed with status " + std::to_string(static_cast<int32_t>(status)));
        return false;
    }
    // FP32 stays FP32: no TF32 unless NVIDIA_TF32_OVERRIDE says so.
    cublasSetMathMode(mCublas, CUBLAS_DEFAULT_MATH);
    return true;
}

int32_t DeformConvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            return kFailure;
        }
        Dims dims[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            dims[i] = inputDesc[i].dims;
        }
        DcnParams params{};
        if (makeParams(dims, outputDesc[0].dims, params) != kDcnOk)
        {
            return kFailure;
        }
        DataType const type = inputDesc[kX].type;
        if (!isSupportedType(type))
        {
            logError(mName + ": only FP32 and FP16 are supported");
            return kFailure;
        }
        if (!ensureCublas())
        {
            return kFailure;
        }
        DcnDataType const dcnType = type == DataType::kHALF ? DcnDataType::kFloat16 : DcnDataType::kFloat32;
        int32_t const status = edgeseg_dcn_forward(params, inputs[kX], inputs[kWeight], inputs[kOffset],
            inputs[kMask], inputs[kBias], outputs[0], workspace, dcnType, stream, mCublas);
        if (status != kDcnOk)
        {
            logError(mName + ": " + edgeseg_dcn_status_string(status));
            return kFailure;
        }
        return kOk;
    }
    catch (std::exception const& err)
    {
        logError(std::string("enqueue failed: ") + err.what());
    }
    return kFailure;
}

nvinfer1::IPluginV3* DeformConvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    try
    {
        std::unique_ptr<DeformConvPlugin> attached(new DeformConvPlugin(mName, mAttributes));
        // Created here rather than in the first enqueue, which may be captured
        // into a CUDA graph; enqueue retries if this fails.
        attached->ensureCublas();
        return attached.release();
    }
    catch (std::exception const& err)
    {
        logError(std::string("attachToContext failed: ") + err.what());
    }
    return nullptr;
}

PluginFieldCollection const* DeformConvPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialized.clear();
        mSerialized.emplace_back("strides", mAttributes.strides, PluginFieldType::kINT32, 2);
        mSerialized.emplace_back("pads", mAttributes.pads, PluginFieldType::kINT32, 4);
        mSerialized.emplace_back("dilations", mAttributes.dilations, PluginFieldType::kINT32, 2);
        mSerialized.emplace_back("group", &mAttributes.group, PluginFieldType::kINT32, 1);
        mSerialized.emplace_back("offset_group", &mAttributes.offset_group, PluginFieldType::kINT32, 1);
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
        mSerializedCollection.fields = mSerialized.data();
        return &mSerializedCollection;
    }
    catch (std::exception const& err)
    {
        logError(std::string("getFieldsToSerialize failed: ") + err.what());
    }
    return nullptr;
}

// ---------------------------------------------------------------- creator

DeformConvPluginCreator::DeformConvPluginCreator()
{
    mFields.emplace_back("strides", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("pads", nullptr, PluginFieldType::kINT32, 4);
    mFields.emplace_back("dilations", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("group", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("offset_group", nullptr, PluginFieldType::kINT32, 1);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* DeformConvPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DeformConvPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DeformConvPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* DeformConvPluginCreator::getFieldNames() noexcept
{
    return &mCollection;
}

nvinfer1::IPluginV3* DeformConvPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build and runtime phases read the same fields (getFieldsToSerialize
        // writes what the build phase was given); absent fields keep ONNX's defaults.
        DeformConvAttributes attributes;
        std::string const layer = name != nullptr ? name : kPluginName;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            bool ok = true;
            if (std::strcmp(field.name, "strides") == 0)
            {
                ok = readInts(field, attributes.strides, 2);
            }
            else if (std::strcmp(field.name, "pads") == 0)
            {
                ok = readInts(field, attributes.pads, 4);
            }
            else if (std::strcmp(field.name, "dilations") == 0)
            {
                ok = readInts(field, attributes.dilations, 2);
            }
            else if (std::strcmp(field.name, "group") == 0)
            {
                ok = readInts(field, &attributes.group, 1);
            }
            else if (std::strcmp(field.name, "offset_group") == 0)
            {
                ok = readInts(field, &attributes.offset_group, 1);
            }
            else
            {
                logWarning(layer + ": ignoring unknown field '" + field.name + "'");
            }
            if (!ok)
            {
                return nullptr;
            }
        }
        std::string const problem = attributes.validate();
        if (!problem.empty())
        {
            logError(layer + ": " + problem);
            return nullptr;
        }
        return new DeformConvPlugin(layer, attributes);
    }
    catch (std::exception const& err)
    {
        logError(std::string("createPlugin failed: ") + err.what());
    }
    return nullptr;
}

} // namespace edgeseg

// ---------------------------------------------------------------- library entry points

extern "C" EDGESEG_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static edgeseg::DeformConvPluginCreator deformConvCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&deformConvCreator};
    nbCreators = 1;
    return creators;
}

extern "C" EDGESEG_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    edgeseg::loggerFinder().set(finder);
}

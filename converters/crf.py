"""A dense CRF as an exportable graph: windowed mean-field inference (the convolutional CRF).

Krähenbühl & Koltun's fully connected CRF with a Gaussian (position) kernel
and a bilateral (position + colour) kernel and Potts compatibility, with the
messages restricted to a local ``window`` (Teichmann & Cipolla's ConvCRF) and
optionally computed on a ``downsample``-times smaller grid. With ``dilation``
s the window's offsets are s pixels of that grid apart (``window`` x ``window``
of them still), so it reaches s times further at the same cost; the kernel
uses their real distance. Written as plain
ONNX (Conv, Mul, Exp, ReduceSum, Softmax, Resize), so the same graph runs in
ONNX Runtime on a CPU and in TensorRT on a GPU.

The mean field, for unary logits ``L`` (C, H, W) and image ``I``:

    Q0 = softmax(L)
    m_t(i, l) = sum_{o in window, o != 0} k(i, i + o) * Q_{t-1}(i + o, l)   # o: multiples of dilation
    Q_t = softmax(L + m_t)            # Potts: sum_l' [l != l'] m(l') = M - m(l); M cancels

    k(i, j) = w_bilateral * exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
            + w_gaussian  * exp(-|p_i - p_j|^2 / 2 theta_gamma^2)

Positions are in full-resolution pixels, colours in 0..255. Neighbours past
the image border contribute nothing. With ``downsample = d`` the image and
logits are average-pooled by ``d``, the messages are computed there, and the
last messages are upsampled (bilinear, half-pixel) and added to the
full-resolution logits: ``probs = softmax(L + up(m_T))``.

:func:`crf_reference` is the same computation in NumPy (float64), written
loop by loop for clarity; the graph must match it to 1e-4.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import ConfigError
from edgeseg.manifest import CRFParams  # the manifest's record of the CRF settings

CRF_OPSET = 19


# --------------------------------------------------------------------------- NumPy reference


def _softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _avg_pool(x: np.ndarray, d: int) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // d, d, w // d, d).mean(axis=(2, 4))


def _upsample_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping (ONNX Resize 'linear', 'half_pixel')."""

    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis_weights(x.shape[1], size[0])
    x0, x1, wx = axis_weights(x.shape[2], size[1])
    rows = x[:, y0, :] * (1 - wy)[None, :, None] + x[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def crf_reference(image: np.ndarray, logits: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refined probabilities (C, H, W), float64, for an (H, W, channels) uint8 image and (C, H, W) logits."""
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    d = params.downsample
    if h % d or w % d:
        raise ConfigError(f"image {h}x{w} is not a multiple of the crf downsample {d}")
    full = logits.astype(np.float64)
    img = image.astype(np.float64).transpose(2, 0, 1)
    low_img = _avg_pool(img, d) if d > 1 else img
    low = _avg_pool(full, d) if d > 1 else full
    _, lh, lw = low.shape
    spatial, gauss = params.offset_constants()
    # kernel weights per offset and pixel; neighbours past the border weigh 0
    weights = np.zeros((len(spatial), lh, lw))
    for k, (dy, dx) in enumerate(params.offsets()):
        if (spatial[k] == 0 and gauss[k] == 0) or abs(dy) >= lh or abs(dx) >= lw:
            continue  # the centre, or an offset past the whole grid: weighs 0
        ys, xs = slice(max(0, -dy), lh - max(0, dy)), slice(max(0, -dx), lw - max(0, dx))
        yn, xn = slice(max(0, dy), lh - max(0, -dy)), slice(max(0, dx), lw - max(0, -dx))
        diff2 = ((low_img[:, ys, xs] - low_img[:, yn, xn]) ** 2).sum(axis=0)
        weights[k, ys, xs] = spatial[k] * np.exp(-diff2 / (2 * params.theta_beta**2)) + gauss[k]
    q = _softmax(low)
    messages = np.zeros_like(low)
    for _ in range(params.iterations):
        messages = np.zeros_like(low)
        for k, (dy, dx) in enumerate(params.offsets()):
            if abs(dy) >= lh or abs(dx) >= lw:
                continue
            ys, xs = slice(max(0, -dy), lh - max(0, dy)), slice(max(0, -dx), lw - max(0, dx))
            yn, xn = slice(max(0, dy), lh - max(0, -dy)), slice(max(0, dx), lw - max(0, -dx))
            messages[:, ys, xs] += weights[k, ys, xs] * q[:, yn, xn]
        q = _softmax(low + messages)
    up = _upsample_bilinear(messages, (h, w)) if d > 1 else messages
    return _softmax(full + up)


# --------------------------------------------------------------------------- ONNX graph


def crf_graph(
    params: CRFParams, num_classes: int, *, height: int, width: int, channels: int = 3
) -> onnx.ModelProto:
    """The CRF as an ONNX model: inputs ``image`` (1, H, W, channels) uint8 and ``logits`` (1, C, H, W) float32;
    outputs ``probs`` (1, C, H, W) float32 and ``mask`` (1, H, W) uint8.

    Each window offset is a Slice of a zero-padded tensor: the kernel weights
    are computed once per image (one (1, 1, h, w) map per offset), and each
    iteration's message is one Sum of (shifted Q x weight) products. Padding
    with zeros makes neighbours past the border contribute nothing.

    Raises:
        ConfigError: the size is not a multiple of ``downsample``.
    """
    d, r = params.downsample, params.window // 2 * params.dilation  # r: the reach, coarse pixels
    if height % d or width % d:
        raise ConfigError(f"crf input {height}x{width} is not a multiple of downsample {d}")
    lh, lw = height // d, width // d
    spatial, gauss = params.offset_constants()
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    const("crf_pads", np.array([0, 0, r, r, 0, 0, r, r], np.int64))
    const("crf_axes_hw", np.array([2, 3], np.int64))
    const("crf_axis1", np.array([1], np.int64))
    const("crf_colour_scale", np.array(-0.5 / params.theta_beta**2, np.float32))
    nodes = [
        # uint8 only through casts to/from float (TensorRT's rule for uint8 I/O tensors)
        helper.make_node("Cast", ["image"], ["crf_img_nhwc_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["crf_img_nhwc_f"], ["crf_img_f"], perm=[0, 3, 1, 2]),
    ]
    low_img, low_logits = "crf_img_f", "logits"
    if d > 1:
        nodes += [
            helper.make_node("AveragePool", ["crf_img_f"], ["crf_img_low"], kernel_shape=[d, d], strides=[d, d]),
            helper.make_node("AveragePool", ["logits"], ["crf_logits_low"], kernel_shape=[d, d], strides=[d, d]),
        ]
        low_img, low_logits = "crf_img_low", "crf_logits_low"

    def softmax(src: str, out: str) -> list[onnx.NodeProto]:
        """Softmax over classes (axis 1) from elementwise ops: ONNX Runtime's Softmax on a
        non-last axis transposes, and measured 10x slower here."""
        return [
            helper.make_node("ReduceMax", [src, "crf_axis1"], [f"{out}_max"], keepdims=1),
            helper.make_node("Sub", [src, f"{out}_max"], [f"{out}_shift"]),
            helper.make_node("Exp", [f"{out}_shift"], [f"{out}_exp"]),
            helper.make_node("ReduceSum", [f"{out}_exp", "crf_axis1"], [f"{out}_sum"], keepdims=1),
            helper.make_node("Div", [f"{out}_exp", f"{out}_sum"], [out]),
        ]

    def shifted(padded: str, dy: int, dx: int, out: str) -> onnx.NodeProto:
        """(…, h, w) view of a padded tensor at offset (dy, dx): out(y, x) = in(y + dy, x + dx)."""
        starts = const(f"{out}_starts", np.array([r + dy, r + dx], np.int64))
        ends = const(f"{out}_ends", np.array([r + dy + lh, r + dx + lw], np.int64))
        return helper.make_node("Slice", [padded, starts, ends, "crf_axes_hw"], [out])

    # kernel weights, once per image: w_o = spatial_o * exp(-|I - I(+o)|^2 / 2 theta_beta^2) + gauss_o
    nodes.append(helper.make_node("Pad", [low_img, "crf_pads"], ["crf_img_pad"], mode="constant"))
    weights: list[tuple[tuple[int, int], str]] = []
    for i, (dy, dx) in enumerate(params.offsets()):
        if spatial[i] == 0 and gauss[i] == 0:
            continue  # the centre: no message to oneself
        o = f"crf_o{i}"
        nodes += [
            shifted("crf_img_pad", dy, dx, f"{o}_img"),
            helper.make_node("Sub", [low_img, f"{o}_img"], [f"{o}_diff"]),
            helper.make_node("Mul", [f"{o}_diff", f"{o}_diff"], [f"{o}_diff2"]),
            helper.make_node("ReduceSum", [f"{o}_diff2", "crf_axis1"], [f"{o}_dist"], keepdims=1),
            helper.make_node("Mul", [f"{o}_dist", "crf_colour_scale"], [f"{o}_arg"]),
            helper.make_node("Exp", [f"{o}_arg"], [f"{o}_colour"]),
            helper.make_node("Mul", [f"{o}_colour", const(f"{o}_spatial", np.array(spatial[i], np.float32))], [f"{o}_bil"]),
            helper.make_node("Add", [f"{o}_bil", const(f"{o}_gauss", np.array(gauss[i], np.float32))], [f"{o}_w"]),
        ]
        weights.append(((dy, dx), f"{o}_w"))

    nodes += softmax(low_logits, "crf_q0")
    q, message = "crf_q0", ""
    for t in range(params.iterations):
        p = f"crf_it{t}"
        nodes.append(helper.make_node("Pad", [q, "crf_pads"], [f"{p}_qpad"], mode="constant"))
        terms = []
        for j, ((dy, dx), w) in enumerate(weights):
            nodes += [
                shifted(f"{p}_qpad", dy, dx, f"{p}_s{j}"),
                helper.make_node("Mul", [f"{p}_s{j}", w], [f"{p}_t{j}"]),
            ]
            terms.append(f"{p}_t{j}")
        nodes += [
            helper.make_node("Sum", terms, [f"{p}_msg"]),
            helper.make_node("Add", [low_logits, f"{p}_msg"], [f"{p}_energy"]),
            *softmax(f"{p}_energy", f"{p}_q"),
        ]
        q, message = f"{p}_q", f"{p}_msg"
    if message and d > 1:
        sizes = const("crf_up_sizes", np.array([1, num_classes, height, width], np.int64))
        nodes.append(
            helper.make_node(
                "Resize", [message, "", "", sizes], ["crf_msg_full"],
                mode="linear", coordinate_transformation_mode="half_pixel",
            )
        )
        message = "crf_msg_full"
    energy = "logits"
    if message:
        nodes.append(helper.make_node("Add", ["logits", message], ["crf_energy_full"]))
        energy = "crf_energy_full"
    nodes += [
        *softmax(energy, "probs"),
        helper.make_node("ArgMax", [energy], ["crf_argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", ["crf_argmax"], ["crf_argmax_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["crf_argmax_f"], ["mask"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "edgeseg_crf",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [1, height, width, channels]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes, height, width]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, num_classes, height, width]),
            helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, height, width]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", CRF_OPSET)], producer_name="edgeseg")
    model.ir_version = 9  # what opset 19 needs; newer IRs are refused by ONNX Runtime 1.31 and TensorRT 10.x
    onnx.checker.check_model(model, full_check=True)
    return model

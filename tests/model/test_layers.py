"""Layer behaviour OpenCV cannot check (it ignores dilation, stride_x/stride_y and most
activations): each compared with a direct NumPy transcription of Darknet's arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.weights import load_weights, save_weights
from model.layers import Activation, LocalAvgPool, MaxPool, Reorg, Shortcut

# Darknet's activations.h, one scalar function each.
SCALAR = {
    "loggy": lambda x: 2 / (1 + math.exp(-x)) - 1,
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "elu": lambda x: x if x >= 0 else math.exp(x) - 1,
    "selu": lambda x: 1.0507 * x if x >= 0 else 1.0507 * 1.6732 * (math.exp(x) - 1),
    "relie": lambda x: x if x > 0 else 0.01 * x,
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "plse": lambda x: 0.01 * (x + 4) if x < -4 else (0.01 * (x - 4) + 1 if x > 4 else 0.125 * x + 0.5),
    "stair": lambda x: math.floor(x / 2) if math.floor(x) % 2 == 0 else (x - math.floor(x)) + math.floor(x / 2),
    "hardtan": lambda x: -1.0 if x < -1 else (1.0 if x > 1 else x),
    "lhtan": lambda x: 0.001 * x if x < 0 else (0.001 * (x - 1) + 1 if x > 1 else x),
    "gelu": lambda x: 0.5 * x * (1 + math.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "hard_mish": lambda x: x if x > 0 else (x * x / 2 + x if x > -2 else 0.0),
    "mish": lambda x: x * math.tanh(x if x > 20 else math.log1p(math.exp(x))),
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_activation_matches_darknet_formula(name: str) -> None:
    x = torch.linspace(-7, 7, 141, dtype=torch.float64)
    expected = torch.tensor([SCALAR[name](v) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(Activation(name)(x), expected, rtol=1e-6, atol=1e-6)


def _darknet_conv(x: np.ndarray, w: np.ndarray, stride_y: int, stride_x: int, pad: int,
                  dilation: int) -> np.ndarray:
    """Direct convolution as Darknet's im2col_cpu_ext does it (padding pad * dilation)."""
    c, h, wd = x.shape
    f, _, k, _ = w.shape
    p = pad * dilation
    out_h = (h + 2 * pad - k) // stride_y + 1
    out_w = (wd + 2 * pad - k) // stride_x + 1
    padded = np.zeros((c, h + 2 * p, wd + 2 * p))
    padded[:, p:p + h, p:p + wd] = x
    out = np.zeros((f, out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(k):
                for kx in range(k):
                    pix = padded[:, oy * stride_y + ky * dilation, ox * stride_x + kx * dilation]
                    out[:, oy, ox] += w[:, :, ky, kx] @ pix
    return out


@pytest.mark.parametrize("opts", [
    {"stride_x": 2, "stride_y": 1, "dilation": 1},
    {"stride_x": 1, "stride_y": 2, "dilation": 2},
    {"stride_x": 1, "stride_y": 1, "dilation": 3},
])
def test_convolution_strides_and_dilation(tmp_path: Path, opts: dict[str, int]) -> None:
    cfg = tmp_path / "conv.cfg"
    cfg.write_text(
        "[net]\nwidth=12\nheight=10\nchannels=3\n"
        f"[convolutional]\nfilters=6\nsize=3\npad=1\nstride_x={opts['stride_x']}\n"
        f"stride_y={opts['stride_y']}\ndilation={opts['dilation']}\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=2,2\nclasses=1\nnum=1\n")
    net = Darknet(cfg).eval()
    conv = net.module_list[0].Conv2d
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        got = conv(x)[0].numpy()
    want = _darknet_conv(x[0].double().numpy(), conv.weight.detach().double().numpy(), opts["stride_y"],
                         opts["stride_x"], 1, opts["dilation"]) + conv.bias.detach().numpy()[:, None, None]
    assert got.shape == want.shape == (6, net.shapes[0].h, net.shapes[0].w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((c, out_h, out_w), -np.inf)
    for i in range(out_h):
        for j in range(out_w):
            for n in range(size):
                for m in range(size):
                    y, xx = off + i * stride + n, off + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


@pytest.mark.parametrize("size,stride,padding", [(2, 1, 1), (3, 2, 3), (5, 1, 4), (2, 2, 0),
                                                 (3, 1, 1)])
def test_maxpool_padding(size: int, stride: int, padding: int) -> None:
    x = torch.randn(2, 7, 9)
    got = MaxPool(size, stride, stride, padding)(x[None])[0].numpy()
    np.testing.assert_array_equal(got, _darknet_maxpool(x.numpy(), size, stride, padding))


def _darknet_shortcut(out: np.ndarray, add: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """shortcut_cpu: out (c2, h2, w2) from the previous layer, add (c1, h1, w1)."""
    c2, h2, w2 = out.shape
    c1, h1, w1 = add.shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    result = out * alpha
    for k in range(min(c1, c2)):
        for j in range(min(h1, h2)):
            for i in range(min(w1, w2)):
                if j * sample < h2 and i * sample < w2 and j * stride < h1 and i * stride < w1:
                    result[k, j * sample, i * sample] += beta * add[k, j * stride, i * stride]
    return result


@pytest.mark.parametrize("out_shape,add_shape", [((4, 6, 6), (6, 6, 6)), ((6, 6, 6), (4, 6, 6)),
                                                 ((4, 3, 3), (4, 6, 6)), ((4, 6, 6), (4, 3, 3))])
def test_shortcut_mismatched_inputs(out_shape: tuple, add_shape: tuple) -> None:
    prev, other = torch.randn(*out_shape), torch.randn(*add_shape)
    got = Shortcut([0], "linear", alpha=0.5, beta=2.0)(prev[None], [other[None]])[0].numpy()
    want = _darknet_shortcut(prev.numpy().astype(np.float64), other.numpy(), 0.5, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- reorg, reorg3d (reorg_layer.c, reorg_old_layer.c, blas.c reorg_cpu) ---------------

def _reorg_cpu(x: np.ndarray, w: int, h: int, c: int, stride: int, forward: int) -> np.ndarray:
    """blas.c reorg_cpu for one image, loop by loop."""
    out = np.zeros(x.size, x.dtype)
    flat = x.ravel()
    out_c = c // (stride * stride)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2 = k % out_c
                offset = k // out_c
                w2 = i * stride + offset % stride
                h2 = j * stride + offset // stride
                out_index = w2 + w * stride * (h2 + h * stride * c2)
                if forward:
                    out[out_index] = flat[in_index]
                else:
                    out[in_index] = flat[out_index]
    return out


@pytest.mark.parametrize("old,reverse,shape", [
    (True, False, (8, 4, 6)), (True, True, (8, 4, 6)),
    (False, False, (3, 4, 6)), (False, True, (32, 2, 3)),
])
def test_reorg_matches_darknet_loops(old: bool, reverse: bool, shape: tuple) -> None:
    """[reorg] calls reorg_cpu with its input's w, h, c; [reorg3d] with its output's
    (forward_reorg_layer); reverse=1 selects forward=1 in both."""
    c, h, w = shape
    s = 2
    x = torch.randn(1, c, h, w)
    got = Reorg(s, reverse=reverse, old=old)(x)[0]
    if old:
        walk = (w, h, c)
    elif reverse:
        walk = (w * s, h * s, c // (s * s))
    else:
        walk = (w // s, h // s, c * s * s)
    want = _reorg_cpu(x[0].numpy(), *walk, s, int(reverse))
    out_c, out_h, out_w = (c // 4, h * 2, w * 2) if reverse else (c * 4, h // 2, w // 2)
    assert got.shape == (out_c, out_h, out_w)
    np.testing.assert_array_equal(got.numpy().ravel(), want)


# --- local_avgpool (maxpool_layer.c forward_local_avgpool_layer) ------------------------

def _darknet_local_avgpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            total, count = np.zeros(c), 0
            for n in range(size):
                for m in range(size):
                    y, xx = off + i * stride + n, off + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        total += x[:, y, xx]
                        count += 1
            out[:, i, j] = total / count
    return out


@pytest.mark.parametrize("size,stride,padding", [(4, 4, 3), (3, 2, 2), (2, 1, 1), (3, 1, 0),
                                                 (5, 2, 4)])
def test_local_avgpool_counts_only_pixels_inside(size: int, stride: int, padding: int) -> None:
    x = torch.randn(3, 9, 11, dtype=torch.float64)
    got = LocalAvgPool(size, stride, stride, padding)(x[None])[0].numpy()
    np.testing.assert_allclose(got, _darknet_local_avgpool(x.numpy(), size, stride, padding),
                               rtol=1e-12, atol=1e-12)


# --- xnor convolution (convolutional_layer.c, gemm.c binary path) -----------------------

def _darknet_xnor_conv(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """binarize_cpu on the input (>0: 1, else -1), binarize_weights per filter (+-mean|w|),
    and the bit-packed gemm's padding: an unset bit, i.e. -1."""
    bx = np.where(x > 0, 1.0, -1.0)
    c, h, wd = x.shape
    padded = np.full((c, h + 2 * pad, wd + 2 * pad), -1.0)
    padded[:, pad:pad + h, pad:pad + wd] = bx
    f, _, k, _ = w.shape
    mean = np.abs(w).reshape(f, -1).mean(1)
    bw = np.where(w > 0, 1.0, -1.0) * mean[:, None, None, None]
    out_h, out_w = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((f, out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            patch = padded[:, oy:oy + k, ox:ox + k]
            out[:, oy, ox] = (bw * patch[None]).sum(axis=(1, 2, 3))
    return out


def test_xnor_convolution_and_its_fused_batchnorm(tmp_path: Path) -> None:
    cfg = tmp_path / "xnor.cfg"
    cfg.write_text(
        "[net]\nwidth=8\nheight=8\nchannels=32\n"
        "[convolutional]\nxnor=1\nbin_output=1\nbatch_normalize=1\nfilters=6\nsize=3\n"
        "stride=1\npad=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=2,2\nclasses=1\nnum=1\n")
    net = Darknet(cfg).eval()
    block = net.module_list[0]
    with torch.no_grad():
        block.BatchNorm2d.running_mean.normal_()
        block.BatchNorm2d.running_var.uniform_(0.5, 2)
        block.BatchNorm2d.weight.normal_()
        block.BatchNorm2d.bias.normal_()
    x = torch.randn(1, 32, 8, 8)
    weight = block.Conv2d.weight.detach().double().numpy().copy()
    with torch.no_grad():
        raw = block.Conv2d(x)[0].double().numpy()
        before = block(x)
        fused = net.fuse().module_list[0](x)
    want = _darknet_xnor_conv(x[0].double().numpy(), weight, 1)
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-4)
    # Darknet folds the BatchNorm into the weights before binarising them
    # (fuse_conv_batchnorm, then binary_align_weights): the same numbers.
    torch.testing.assert_close(fused, before, rtol=1e-4, atol=1e-4)


# --- [Gaussian_yolo] (gaussian_yolo_layer.c) and [region] with softmax=0 -----------------

def _logistic(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def _darknet_gaussian_rows(raw: np.ndarray, anchors: list, classes: int, net_hw: tuple,
                           scale_x_y: float, point: str) -> np.ndarray:
    """forward_gaussian_yolo_layer's activations, get_gaussian_yolo_box and the score of
    get_gaussian_yolo_detections (objectness * p * (1 - mean sigma)), row by row in our
    order (anchor, y, x): cx, cy, w, h (pixels), objectness, score / objectness."""
    a_count, per = len(anchors), 9 + classes
    _, lh, lw = raw.shape
    p = raw.reshape(a_count, per, lh, lw)
    rows = []
    for n in range(a_count):
        for j in range(lh):
            for i in range(lw):
                v = p[n, :, j, i].astype(np.float64)
                tx = _logistic(v[0]) * scale_x_y - 0.5 * (scale_x_y - 1)
                ty = _logistic(v[2]) * scale_x_y - 0.5 * (scale_x_y - 1)
                bw = np.exp(v[4]) * anchors[n][0] / net_hw[1]
                bh = np.exp(v[6]) * anchors[n][1] / net_hw[0]
                bx, by = (i + tx) / lw, (j + ty) / lh
                if point == "left_top":
                    bx, by = bx + bw / 2, by + bh / 2
                elif point == "right_bottom":
                    bx, by = bx - bw / 2, by - bh / 2
                uc = _logistic(v[[1, 3, 5, 7]]).sum() / 4.0
                obj = _logistic(v[8])
                prob = obj * _logistic(v[9:]) * (1.0 - uc)
                rows.append([bx * net_hw[1], by * net_hw[0], bw * net_hw[1], bh * net_hw[0],
                             obj, *(prob / obj)])
    return np.array(rows)


@pytest.mark.parametrize("point", ["center", "left_top", "right_bottom", "elsewhere"])
def test_gaussian_yolo_matches_darknet(tmp_path: Path, point: str) -> None:
    cfg = tmp_path / "gauss.cfg"
    anchors = [(7, 10), (14, 24), (27, 43)]
    cfg.write_text(
        "[net]\nwidth=64\nheight=48\nchannels=3\n"
        "[convolutional]\nfilters=26\nsize=3\nstride=8\npad=1\nactivation=linear\n"
        f"[Gaussian_yolo]\nmask=1,2\nanchors={','.join(f'{a},{b}' for a, b in anchors)}\n"
        f"classes=4\nnum=3\nscale_x_y=1.1\nyolo_point={point}\n")
    net = Darknet(cfg).eval()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        raw = net.module_list[0](x)
        got = net(x)[0][0].double().numpy()
    want = _darknet_gaussian_rows(raw[0].numpy(), anchors[1:], 4, (48, 64), np.float32(1.1),
                                  point if point != "elsewhere" else "center")
    assert got.shape == want.shape == (2 * 6 * 8, 9)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_region_without_softmax_keeps_raw_class_values(tmp_path: Path) -> None:
    """forward_region_layer applies the logistic to objectness only and the softmax only
    with softmax=1; x, y go through the logistic in get_region_box, w, h are exp times
    anchors in grid cells."""
    cfg = tmp_path / "region.cfg"
    cfg.write_text(
        "[net]\nwidth=64\nheight=64\nchannels=3\n"
        "[convolutional]\nfilters=14\nsize=3\nstride=16\npad=1\nactivation=linear\n"
        "[region]\nanchors=1,2,3,4\nclasses=2\nnum=2\ncoords=4\nsoftmax=0\n")
    net = Darknet(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        raw = net.module_list[0](x)[0].double().numpy().reshape(2, 7, 4, 4)
        got = net(x)[0][0].double().numpy().reshape(2, 4, 4, 7)
    for n, (aw, ah) in enumerate([(1, 2), (3, 4)]):
        for j in range(4):
            for i in range(4):
                v = raw[n, :, j, i]
                want = [(i + _logistic(v[0])) * 16, (j + _logistic(v[1])) * 16,
                        np.exp(v[2]) * aw * 16, np.exp(v[3]) * ah * 16, _logistic(v[4]),
                        v[5], v[6]]
                np.testing.assert_allclose(got[n, j, i], want, rtol=1e-5, atol=1e-5)


def test_share_index_uses_the_shared_layers_weights_and_its_own_geometry(
        tmp_path: Path) -> None:
    """resnet152_trident.cfg: a convolution with share_index computes with the shared
    layer's weights, biases and batch norm (fused into them at load) and its own
    dilation; the .weights file holds nothing for it."""
    cfg = tmp_path / "share.cfg"
    cfg.write_text(
        "[net]\nwidth=16\nheight=16\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=linear\n"
        "[convolutional]\nshare_index=-1\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\n"
        "dilation=2\nactivation=relu\n"
        "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=2,2\nclasses=1\nnum=1\n")
    torch.manual_seed(0)
    net = Darknet(cfg).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
                module.weight.normal_()
                module.bias.normal_()
    weights = tmp_path / "share.weights"
    save_weights(net, weights)
    floats = (8 * 4 + 8 * 3 * 9) + (8 * 4 + 8 * 8 * 9) + (6 + 6 * 8)
    assert weights.stat().st_size == 20 + 4 * floats
    loaded = Darknet(cfg).eval()
    load_weights(loaded, weights)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        hidden = loaded.module_list[0](x)
        shared = loaded.module_list[1]
        want = torch.relu(shared.BatchNorm2d(torch.nn.functional.conv2d(
            hidden, shared.Conv2d.weight, None, 1, 2, 2)))
        got = loaded.module_list[2](hidden)
        before = loaded(x)[0]
        after = loaded.fuse()(x)[0]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert loaded.module_list[2].Conv2d.weight is loaded.module_list[1].Conv2d.weight

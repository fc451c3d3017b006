"""Layer behaviour OpenCV cannot check (it ignores dilation, stride_x/stride_y and most
activations): each compared with a direct NumPy transcription of Darknet's arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.layers import Activation, MaxPool, Shortcut

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

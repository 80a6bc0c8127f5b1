"""Quantizer and compiler: supported chains, clear errors, and the quantization error bound."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sw import Accelerator, CompileError, Program, ProgramError, compile_model
from sw import numerics as nx


def _net(*layers):
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("model,needle", [
    (_net(nn.Conv2d(1, 4, 3, groups=1), nn.Sigmoid()), "Sigmoid at '1'"),
    (_net(nn.Conv2d(2, 4, 3, groups=2)), "groups=2"),
    (_net(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2)), "AvgPool2d at '1'"),
    (_net(nn.Conv2d(1, 4, (3, 1))), "only square"),
    (_net(nn.Conv2d(1, 4, 3, dilation=2)), "dilation"),
    (_net(nn.Conv2d(1, 4, 3), nn.MaxPool2d(3)), "MaxPool2d at '1'"),
    (_net(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4)), "BatchNorm1d at '2'"),
    (_net(nn.ReLU(), nn.Conv2d(1, 4, 3)), "does not follow"),
    (_net(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), "must directly follow"),
    (_net(nn.Conv2d(1, 4, 3), nn.Flatten()), "ends with a flatten"),
])
def test_unsupported_models_name_the_op_and_path(model, needle):
    with pytest.raises(CompileError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        compile_model(model, torch.rand(2, 1, 4, 4))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + x


def test_branching_graph_is_refused():
    with pytest.raises(CompileError, match="plain chain"):
        compile_model(_Residual().eval(), torch.rand(1, 1, 4, 4))


def test_training_mode_and_bad_calibration_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(CompileError, match="training mode"):
        compile_model(model, torch.rand(1, 1, 4, 4))
    with pytest.raises(CompileError, match="NCHW"):
        compile_model(model.eval(), torch.rand(1, 4, 4))
    with pytest.raises(CompileError, match="epsilon"):
        compile_model(model, torch.rand(1, 1, 4, 4), epsilon=-1)


def test_shape_mismatch_is_refused():
    model = _net(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(CompileError, match="'2' expects 10 input features, gets 16"):
        compile_model(model, torch.rand(1, 1, 4, 4))


def _random_bn(c, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    bn.running_mean = torch.randn(c, generator=g)
    bn.running_var = torch.rand(c, generator=g) + 0.5
    bn.weight.data = torch.randn(c, generator=g)
    bn.bias.data = torch.randn(c, generator=g)
    return bn


def _bound_check(model, x):
    """Golden output vs the float model, within the error bound derived from the scales.

    For one output: |x̂·ŵ − x·w| ≤ Σ|x̂|·s_w/2 + Σ|w|·s_x/2 per product (rounding of each
    quantized operand), plus s_x·s_w/2 for the bias, a relative 2**-15 for the 16-bit multiplier,
    and s_o/2 for rounding the output; then each later layer propagates it through |w|. Here the
    models are a single conv layer (BatchNorm folded into the float weights), so the bound is
    exact to state.
    """
    program = compile_model(model, x)
    layer = program.layers[0]
    out = Accelerator("golden").run(program, x)
    with torch.no_grad():
        ref = model(x).double().numpy()
    xhat = nx.dequantize(nx.quantize(x.double().numpy(), program.input_scale),
                         program.input_scale)
    s_x, s_o = layer.in_scale, layer.out_scale
    w_q = layer.weight.astype(np.float64)
    # Per-channel weight scale, recovered from the multiplier-free definition.
    w_float = model[0].weight.detach().double().numpy()
    if len(model) > 1 and isinstance(model[1], nn.BatchNorm2d):
        bn = model[1]
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w_float = w_float * scale.numpy()[:, None, None, None]
    wmax = np.abs(w_float.reshape(w_float.shape[0], -1)).max(1)
    s_w = np.where(wmax > 0, wmax, 1.0) / 127
    assert np.allclose(w_q * s_w.reshape((-1,) + (1,) * (w_q.ndim - 1)), w_float,
                       atol=s_w.max() / 2 + 1e-12)
    ab_x, ab_w = torch.tensor(np.abs(xhat)), torch.tensor(np.abs(w_float))
    ones_x = torch.ones_like(ab_x) * (s_x / 2)
    def conv(a, b):
        return torch.nn.functional.conv2d(a, b, stride=layer.stride,
                                          padding=layer.padding).numpy()
    err = (conv(ab_x, torch.ones_like(ab_w) * torch.tensor(s_w)[:, None, None, None] / 2)
           + conv(ones_x, ab_w))
    cshape = (1, -1, 1, 1)
    acc_real = np.abs(ref) + err
    bound = (err + (s_x * s_w / 2).reshape(cshape) + acc_real * 2.0 ** -15 + s_o / 2 + 1e-9)
    got = out.values.reshape(ref.shape)
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) - bound)
    return program


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(1, 2),
       st.integers(0, 1), st.integers(3, 9), st.booleans(), st.integers(0, 10 ** 6))
def test_conv_within_derived_error_bound(ci, co, k, stride, pad, size, bn, seed):
    torch.manual_seed(seed)
    if size + 2 * pad < k:
        size = k
    layers = [nn.Conv2d(ci, co, k, stride=stride, padding=pad)]
    if bn:
        layers.append(_random_bn(co, seed))
    model = _net(*layers)
    _bound_check(model, torch.randn(3, ci, size, size))


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 10 ** 6))
def test_linear_within_derived_error_bound(n_in, n_out, seed):
    torch.manual_seed(seed)
    model = _net(nn.Linear(n_in, n_out))
    # A (N, 1, 1, n_in) input: a vector, as the runtime's NCHW batches carry it.
    model_in = torch.randn(4, 1, 1, n_in)
    program = compile_model(_net(nn.Flatten(), model[0]), model_in)
    out = Accelerator("golden").run(program, model_in)
    with torch.no_grad():
        ref = model(model_in.flatten(1)).double().numpy()
    layer = program.layers[0]
    s_x, s_o = layer.in_scale, layer.out_scale
    w = model[0].weight.detach().double().numpy()
    s_w = np.abs(w).max(1) / 127
    xhat = nx.dequantize(nx.quantize(model_in.flatten(1).double().numpy(), s_x), s_x)
    err = np.abs(xhat) @ (np.ones_like(w) * s_w[:, None] / 2).T + (s_x / 2) * np.abs(w).sum(1)
    bound = err + s_x * s_w / 2 + (np.abs(ref) + err) * 2.0 ** -15 + s_o / 2 + 1e-9
    assert np.all(np.abs(out.values - ref) <= bound)


def test_batchnorm_is_folded_not_dropped():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = _net(conv, _random_bn(3, 1))
    x = torch.randn(2, 2, 5, 5)
    program = _bound_check(model, x)
    # Without the BN the outputs differ far beyond the quantization error.
    plain = Accelerator("golden").run(compile_model(_net(conv), x), x)
    assert not np.allclose(plain.values, Accelerator("golden").run(program, x).values, atol=0.1)


def test_one_calibration_image_is_enough():
    from sw.models import load_model
    model, data = load_model("demo-mnist")
    x_train, _, x_test, y_test = data()
    program = compile_model(model, x_train[:1])
    out = Accelerator("golden").run(program, x_test[:300])
    acc = (out.raw.argmax(1) == y_test[:300].numpy()).mean()
    with torch.no_grad():
        ref = (model(x_test[:300]).argmax(1) == y_test[:300]).float().mean().item()
    assert acc >= ref - 0.05, (acc, ref)


def test_program_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _net(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                 nn.Linear(4 * 3 * 3, 5))
    x = torch.rand(3, 1, 6, 6)
    program = compile_model(model, x, epsilon=2)
    path = tmp_path / "p.tsp"
    program.save(path)
    loaded = Program.load(path)
    assert loaded.epsilon == 2 and loaded.config == program.config
    a = Accelerator("golden").run(program, x)
    b = Accelerator("golden").run(loaded, x)
    assert np.array_equal(a.raw, b.raw)
    (tmp_path / "junk").write_bytes(b"not a program")
    with pytest.raises(ProgramError, match="not a tileskip program"):
        Program.load(tmp_path / "junk")

"""From an eval-mode ``torch.nn.Module`` to a :class:`~sw.program.Program`.

Steps: trace with ``torch.fx``; group the chain into layers (conv [+BN] [+ReLU] [+2×2 max-pool],
linear [+ReLU]); fold BatchNorm into the conv; run the folded float network on the calibration
batch to find each activation's scale; quantize weights per output channel and biases; derive the
requantization multipliers. Anything unsupported raises :class:`CompileError` naming the operation
and its module path, and nothing is returned half-compiled.
"""

import operator

import numpy as np
import torch
import torch.fx
from torch import nn

from . import numerics as nx
from .config import Config
from .program import Layer, Program

__all__ = ["CompileError", "compile_model"]


class CompileError(ValueError):
    """A model the compiler cannot turn into a program."""


_NOOP_MODULES = (nn.Identity, nn.Dropout)
_FLATTEN_FUNCS = (torch.flatten,)
_RELU_FUNCS = (torch.relu, torch.nn.functional.relu)


def _op_of(node, modules):
    """Classify one fx node as (op, module-or-None), or raise naming it."""
    if node.op == "call_module":
        mod = modules[node.target]
        for op, types in (("conv", nn.Conv2d), ("bn", nn.BatchNorm2d), ("relu", nn.ReLU),
                          ("pool", nn.MaxPool2d), ("fc", nn.Linear), ("flatten", nn.Flatten),
                          ("noop", _NOOP_MODULES)):
            if isinstance(mod, types):
                return op, mod
        raise CompileError(f"unsupported layer {type(mod).__name__} at '{node.target}'")
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu", None
        if node.target in _FLATTEN_FUNCS:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise CompileError(f"unsupported flatten(start_dim={start}) at '{node.name}'; "
                                   f"only start_dim=1 keeps the batch")
            return "flatten", None
        name = getattr(node.target, "__name__", str(node.target))
        if node.target in (operator.add, torch.add, torch.cat):
            raise CompileError(f"unsupported operation {name} at '{node.name}': "
                               f"only a plain chain of layers is supported")
        raise CompileError(f"unsupported operation {name} at '{node.name}'")
    if node.op == "call_method":
        if node.target == "relu":
            return "relu", None
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if node.target == "flatten" and start == 1:
            return "flatten", None
        raise CompileError(f"unsupported method .{node.target}() at '{node.name}'")
    raise CompileError(f"unsupported graph node {node.op} '{node.name}'")


def _chain(model):
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds; the user needs to know tracing failed
        raise CompileError(f"cannot trace the model with torch.fx: {e}") from e
    modules = dict(graph.named_modules())
    ops, prev = [], None
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise CompileError(f"the model takes more than one input ('{node.name}')")
            prev = node
            continue
        if node.op == "output":
            if node.args[0] is not prev:
                raise CompileError("the model's output is not the end of its layer chain")
            break
        inputs = [a for a in node.all_input_nodes]
        if inputs != [prev]:
            raise CompileError(f"'{node.target if node.op == 'call_module' else node.name}' does "
                               f"not take the previous layer's output alone: only a plain chain "
                               f"of layers is supported")
        op, mod = _op_of(node, modules)
        path = node.target if node.op == "call_module" else node.name
        if op != "noop":
            ops.append((op, mod, path))
        prev = node
    return ops


def _check_conv(conv, path):
    k = conv.kernel_size
    problems = []
    if conv.groups != 1:
        problems.append(f"groups={conv.groups} (only 1)")
    if k[0] != k[1]:
        problems.append(f"kernel {k} (only square)")
    if conv.stride[0] != conv.stride[1]:
        problems.append(f"stride {conv.stride} (only equal strides)")
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1]:
        problems.append(f"padding {conv.padding!r} (only equal integer padding)")
    if conv.dilation != (1, 1):
        problems.append(f"dilation {conv.dilation} (only 1)")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode '{conv.padding_mode}' (only 'zeros')")
    if problems:
        raise CompileError(f"unsupported Conv2d at '{path}': " + "; ".join(problems))


def _check_pool(pool, path):
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if (pair(pool.kernel_size) != (2, 2) or stride != (2, 2) or pair(pool.padding) != (0, 0)
            or pair(pool.dilation) != (1, 1) or pool.ceil_mode or pool.return_indices):
        raise CompileError(f"unsupported MaxPool2d at '{path}': only kernel 2, stride 2, "
                           f"no padding, floor mode")


def _group(ops):
    """Fuse the chain into layer groups: dicts with the conv/linear, bn, relu, pool, flatten."""
    groups, pending_flatten, i = [], False, 0
    while i < len(ops):
        op, mod, path = ops[i]
        if op == "flatten":
            pending_flatten = True
            i += 1
            continue
        if op not in ("conv", "fc"):
            raise CompileError(f"{type(mod).__name__ if mod else op} at '{path}' does not follow "
                               f"a Conv2d or Linear it could be fused into")
        g = {"kind": op, "mod": mod, "path": path, "bn": None, "relu": False, "pool": False,
             "flatten_before": pending_flatten}
        pending_flatten = False
        if op == "conv":
            _check_conv(mod, path)
        i += 1
        while i < len(ops) and ops[i][0] in ("bn", "relu", "pool"):
            nop, nmod, npath = ops[i]
            if nop == "bn":
                if op != "conv" or g["bn"] is not None or g["relu"] or g["pool"]:
                    raise CompileError(f"BatchNorm2d at '{npath}' must directly follow a Conv2d "
                                       f"to be folded into it")
                g["bn"] = nmod
            elif nop == "relu":
                if g["relu"]:
                    raise CompileError(f"second ReLU at '{npath}'")
                g["relu"] = True
            else:
                if op != "conv":
                    raise CompileError(f"MaxPool2d at '{npath}' after a Linear is not supported")
                if g["pool"]:
                    raise CompileError(f"second MaxPool2d at '{npath}' in one layer is not "
                                       f"supported")
                _check_pool(nmod, npath)
                g["pool"] = True
            i += 1
        groups.append(g)
    if pending_flatten:
        raise CompileError("the model ends with a flatten; it must end with a Conv2d or Linear")
    if not groups:
        raise CompileError("the model has no Conv2d or Linear layer")
    return groups


def _fold(g):
    """Float64 weight and bias of a group with BatchNorm folded in."""
    mod = g["mod"]
    w = mod.weight.detach().double().clone()
    b = (mod.bias.detach().double().clone() if mod.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    bn = g["bn"]
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise CompileError(f"BatchNorm2d after '{g['path']}' has no running statistics")
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(std)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        w = w * scale.reshape(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * scale + beta
    return w, b


def _float_layer(g, w, b, x):
    if g["kind"] == "conv":
        mod = g["mod"]
        y = torch.nn.functional.conv2d(x, w, b, stride=mod.stride, padding=mod.padding)
    else:
        y = torch.nn.functional.linear(x.flatten(1), w, b)
    if g["relu"]:
        y = torch.relu(y)
    if g["pool"]:
        y = torch.nn.functional.max_pool2d(y, 2)
    return y


def _act_scale(t):
    m = float(t.abs().max()) if t.numel() else 0.0
    return (m if m > 0 else 1.0) / nx.ACT_MAX


def compile_model(model, calibration, epsilon=0, config=None):
    """Quantize and compile ``model`` for the accelerator.

    Parameters
    ----------
    model : torch.nn.Module
        An eval-mode chain of Conv2d (groups=1), BatchNorm2d, ReLU, MaxPool2d(2), Flatten, Linear.
    calibration : torch.Tensor
        A float NCHW batch (one image is enough) used to choose the activation scales.
    epsilon : int
        Tile threshold in quantized units (0 = skip exact zeros only).
    config : Config, optional
        The accelerator configuration; ``None`` is the default.
    """
    config = config or Config()
    if not isinstance(epsilon, int) or isinstance(epsilon, bool) or epsilon < 0:
        raise CompileError(f"epsilon must be a non-negative integer, not {epsilon!r}")
    if model.training:
        raise CompileError("the model is in training mode; call model.eval() first")
    x = torch.as_tensor(calibration)
    if x.ndim != 4 or x.shape[0] < 1:
        raise CompileError(f"calibration must be a float NCHW batch, not shape {tuple(x.shape)}")
    groups = _group(_chain(model))

    x = x.detach().double()
    input_shape = tuple(x.shape[1:])
    input_scale = in_scale = _act_scale(x)
    shape = input_shape
    layers = []
    for g in groups:
        mod, path = g["mod"], g["path"]
        w, b = _fold(g)
        if g["kind"] == "conv":
            if shape[0] != mod.in_channels:
                raise CompileError(f"'{path}' expects {mod.in_channels} input channels, gets "
                                   f"{shape[0]}")
            if g["flatten_before"]:
                raise CompileError(f"Conv2d at '{path}' after a flatten is not supported")
        else:
            if len(shape) != 3 or (shape[0] * shape[1] * shape[2] != mod.in_features):
                raise CompileError(f"'{path}' expects {mod.in_features} input features, gets "
                                   f"{int(np.prod(shape))} (shape {shape})")
            if not g["flatten_before"] and shape[1:] != (1, 1):
                raise CompileError(f"Linear at '{path}' takes a {shape} feature map without a "
                                   f"flatten before it")
        y = _float_layer(g, w, b, x)
        out_scale = _act_scale(y)
        # Per-output-channel symmetric weights.
        wmax = w.abs().reshape(w.shape[0], -1).max(dim=1).values.numpy()
        w_scale = np.where(wmax > 0, wmax, 1.0) / nx.WEIGHT_MAX
        wshape = (-1,) + (1,) * (w.ndim - 1)
        wq = nx.quantize(w.numpy(), w_scale.reshape(wshape), lo=-nx.WEIGHT_MAX, hi=nx.WEIGHT_MAX)
        acc_scale = in_scale * w_scale
        bq = nx.quantize(b.numpy(), acc_scale, lo=nx.ACC_MIN, hi=nx.ACC_MAX)
        if np.any(np.abs(b.numpy() / acc_scale) > nx.ACC_MAX):
            raise CompileError(f"'{path}': bias too large for int32 at this scale")
        try:
            mults = [nx.quantize_multiplier(r) for r in acc_scale / out_scale]
        except nx.NumericsError as e:
            raise CompileError(f"'{path}': {e}") from None
        if g["kind"] == "conv":
            out_shape = tuple(y.shape[1:])
            layer = Layer(path, "conv", shape, out_shape, wq.astype(np.int8), bq.astype(np.int32),
                          np.array([m for m, _ in mults], dtype=np.int32),
                          np.array([s for _, s in mults], dtype=np.int32),
                          float(in_scale), float(out_scale), kernel=mod.kernel_size[0],
                          stride=mod.stride[0], padding=mod.padding[0], relu=g["relu"],
                          pool=g["pool"])
        else:
            out_shape = (mod.out_features, 1, 1)
            layer = Layer(path, "fc", shape, out_shape, wq.astype(np.int8), bq.astype(np.int32),
                          np.array([m for m, _ in mults], dtype=np.int32),
                          np.array([s for _, s in mults], dtype=np.int32),
                          float(in_scale), float(out_scale), relu=g["relu"])
        if 0 in layer.conv_shape:
            raise CompileError(f"'{path}': output shape {layer.conv_shape} is empty")
        try:
            nx.check_accumulator(layer.reduction, layer.bias, f"'{path}'")
        except nx.NumericsError as e:
            raise CompileError(str(e)) from None
        layers.append(layer)
        x = y if g["kind"] == "conv" else y.reshape(y.shape[0], -1, 1, 1)
        shape = out_shape
        in_scale = out_scale
    return Program(config, layers, input_shape, float(input_scale), epsilon)

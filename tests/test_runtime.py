"""Golden runtime on a real network: accuracy, ε and skipping semantics, the CLI report."""

import json

import numpy as np
import pytest
import torch

from sw import Accelerator, Config, ConfigError, compile_model, layout
from sw import numerics as nx
from sw.cli import CALIBRATION_IMAGES, main
from sw.config import CONFIGS
from sw.models import load_model
from sw.runtime import RuntimeError_


@pytest.fixture(scope="module")
def demo():
    model, data = load_model("demo-mnist")
    x_train, _, x_test, y_test = data()
    return model, compile_model(model, x_train[:CALIBRATION_IMAGES]), x_test, y_test


def test_demo_int8_accuracy_within_0_3_points_of_fp32(demo):
    model, program, x_test, y_test = demo
    out = Accelerator("golden").run(program, x_test)
    int8 = (out.raw.argmax(1) == y_test.numpy()).mean()
    with torch.no_grad():
        fp32 = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert len(x_test) == 1000
    assert int8 >= fp32 - 0.003, (int8, fp32)


def _dense_reference(program, xq):
    """The network without any tile logic: plain integer layers."""
    x = xq
    for layer in program.layers:
        x = x.reshape((len(x),) + tuple(layer.in_shape))
        if layer.kind == "conv":
            acc = nx.conv2d_acc(x, layer.weight, layer.bias, stride=layer.stride,
                                padding=layer.padding)
        else:
            acc = nx.linear_acc(x.reshape(len(x), -1), layer.weight, layer.bias)
        x = nx.requantize(acc, layer.mult, layer.shift, relu=layer.relu)
        if layer.pool:
            x = nx.maxpool2x2(x)
    return x.reshape(len(x), -1)


def test_epsilon_zero_changes_nothing(demo):
    _, program, x_test, _ = demo
    x = x_test[:50]
    out = Accelerator("golden").run(program, x)
    from sw.runtime import quantize_input
    assert np.array_equal(out.raw, _dense_reference(program, quantize_input(program, x)))
    # The demo's input really has zero tiles, so "nothing changes" is not vacuous.
    assert out.stats["layers"][0]["act_tiles_flagged"] > 0


def test_epsilon_zeroes_small_tiles(demo):
    _, program, x_test, _ = demo
    x = x_test[:50]
    eps = 6
    out = Accelerator("golden").run(program.with_epsilon(eps), x)
    dense = Accelerator("golden").run(program, x)
    assert not np.array_equal(out.raw, dense.raw)    # ε > 0 does change the numbers...
    flagged = [layer["act_tiles_flagged"] for layer in out.stats["layers"]]
    assert all(f >= d["act_tiles_flagged"] for f, d in zip(flagged, dense.stats["layers"]))


def test_skip_changes_counts_not_outputs(demo):
    _, program, x_test, _ = demo
    p = program.with_epsilon(3)
    on = Accelerator("golden").run(p, x_test[:20], skip=True)
    off = Accelerator("golden").run(p, x_test[:20], skip=False)
    assert np.array_equal(on.raw, off.raw)
    t_on, t_off = on.stats["totals"], off.stats["totals"]
    assert t_off["act_bytes_read"] == t_off["act_bytes_dense"]
    assert t_on["act_bytes_read"] < t_off["act_bytes_read"]


def test_run_refuses_bad_input(demo):
    _, program, x_test, _ = demo
    acc = Accelerator("golden")
    with pytest.raises(RuntimeError_, match=r"shape \(N, 1, 28, 28\)"):
        acc.run(program, x_test[:2, :, :27])
    bad = x_test[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError_, match="NaN"):
        acc.run(program, bad)
    with pytest.raises(RuntimeError_, match="unknown backend 'fpga'"):
        Accelerator("fpga")


def test_config_validation():
    with pytest.raises(ConfigError, match="Config.rows must be a positive integer, not 0"):
        Config(rows=0)
    with pytest.raises(ConfigError, match="power of two"):
        Config(cols=3, tile=(1, 1, 3))
    with pytest.raises(ConfigError, match="Config.loader must be one of 'pipelined', "
                                          "'compact', not 'fast'"):
        Config(loader="fast")
    with pytest.raises(ConfigError, match="Config.bus must be one of 'pipelined', "
                                          "'compact', not 'serial'"):
        Config(bus="serial")
    with pytest.raises(ConfigError, match="Config.shadows must be a non-negative integer, not -1"):
        Config(shadows=-1)
    for name in ("acc_bits", "counter_bits"):
        for bits in (15, 33, 24.0, True):
            with pytest.raises(ConfigError, match=f"Config.{name} must be an integer from 16 "
                                                  f"to 32, not {bits}"):
                Config(**{name: bits})
    # A kernel row of 2 windows at stride 2 and kernel 3 spans 5 pixels, 3 words: 2 banks hold
    # one window (the pipelined loader's need) but not the row.
    small = dict(cols=2, tile=(1, 1, 2), act_banks=2, out_words=1)
    assert Config(**small).loader == "pipelined"
    with pytest.raises(ConfigError, match=r"Config.act_banks \(2\) is too few for the compact "
                                          r"loader: .* spans 3 words"):
        Config(**small, loader="compact")
    with pytest.raises(ConfigError, match="unknown configuration keys: bogus"):
        Config.from_dict({"bogus": 1})
    assert Config.from_dict(Config().to_dict()) == Config()
    up5k = CONFIGS["up5k"]
    assert Config.from_dict(up5k.to_dict()) == up5k and up5k.loader == "compact"
    assert layout.config_from_words(layout.config_words(up5k)).acc_bits == up5k.acc_bits == 24


def test_cli_json_report(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["run", "--images", "20", "--epsilon", "2", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and "total" in text
    report = json.loads(path.read_text())
    assert report["images"] == 20 and report["epsilon"] == 2 and report["skip"] is True
    assert [layer["kind"] for layer in report["layers"]] == ["conv"] * 3 + ["fc"] * 2
    for key, total in report["totals"].items():
        values = [layer[key] for layer in report["layers"]]
        assert total == (None if None in values else sum(values))
    assert len(report["outputs_sha256"]) == 64


def test_cli_bad_arguments(capsys):
    assert main(["run", "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--epsilon", "-1"])

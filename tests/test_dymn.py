"""The DyMN teachers: the released key layout for every name, strict loading, hand-checked dynamic
parts, a fixed-weights block reference, random-init behaviour and the commands that use them."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.evaluate.teacher import open_teacher_store, teacher_row
from pipeline.store import LogitsStore
from teacher import TeacherError, create_dymn, load_teacher
from teacher.dymn import ContextGenerator, DyMNConfig, DynamicBlock, DynamicConv, DynamicReLU
from teacher.registry import RELEASED, released
from tests.teacher_fixtures import tone_noise_corpus

DYMN_NAMES = ["dymn04_as", "dymn10_as", "dymn20_as", "dymn20_as(1)", "dymn20_as(2)", "dymn20_as(3)",
              "dymn04_replace_se_as", "dymn10_replace_se_as", "dymn04_im", "dymn10_im", "dymn20_im"]

# Upstream's layout, gathered once by building EfficientAT's models/dymn (commit a425fdc) for each
# (width, use_dy_blocks, classes): number of state-dict entries, parameters, and the sha256 of its
# sorted "key shape" lines (the format of `layout_digest`). No checkpoint was downloaded.
UPSTREAM_LAYOUT = {
    (0.4, "all", 527): (578, 1_961_239, "66c88011203d75234e5f39d87b8f377ccd58f79798d8a8eacf70db7dc39e3aae"),
    (1.0, "all", 527): (578, 10_548_479, "455d63c184c7386bc47b9e99deea7404813f657f81b625e23090cc8562b87548"),
    (2.0, "all", 527): (578, 39_966_143, "c05e154b6e6978025008be7037c34c7b24ffeef0b36b06d2c8d6b842a198c1cb"),
    (0.4, "replace_se", 527): (440, 1_829_287, "da4bfca396f944b6209fabd2ceda3e5a46339850e386b42da5e5dce5bc95acda"),
    (1.0, "replace_se", 527): (440, 9_833_935, "24d96f4c23f692a044d35a34aa1163ae8ed8d6bf216c758a380b9222b431a035"),
    (0.4, "all", 1000): (578, 2_203_888, "8f366840f8f27be2041bc330e125cb345c7743010d769ec9d6fa94fd355d8a48"),
    (1.0, "all", 1000): (578, 11_154_392, "14754e366716e7533817355cd0835fb0985a3c1fa8beac9dac29a22ee9713c4c"),
    (2.0, "all", 1000): (578, 41_177_496, "d9800eff995915a1dc9e2efa9b72704fb2a33206e8e189b63debf7cfd0b2fc06"),
}

# dymn10's layout where it can be derived by hand: block 1 (16 → 64 → 24, k 3) has context
# H = clip(64 // 4, 32, 128) = 32; block 14 (160 → 960 → 160, k 5) has H = clip(240, 32, 128) = 128.
DYMN10_KEYS = {
    "in_c.0.weight": (16, 1, 3, 3),
    "layers.0.depth_conv.weight": (1, 1, 4, 16 * 3 * 3),  # block 0 does not expand: no exp_conv
    "layers.1.context_gen.joint_conv.weight": (32, 16, 1, 1),
    "layers.1.context_gen.conv_f.weight": (64, 32, 1, 1),
    "layers.1.context_gen.conv_t.bias": (64,),
    "layers.1.exp_conv.weight": (1, 1, 4, 64 * 16),
    "layers.1.exp_conv.residuals.0.weight": (4, 32),
    "layers.1.depth_conv.weight": (1, 1, 4, 64 * 3 * 3),
    "layers.1.depth_act.coef_net.0.weight": (2 * 2 * 64, 32),
    "layers.1.proj_conv.weight": (1, 1, 4, 24 * 64),
    "layers.1.proj_norm.running_var": (24,),
    "layers.14.depth_conv.weight": (1, 1, 4, 960 * 5 * 5),
    "layers.14.context_gen.joint_conv.weight": (128, 160, 1, 1),
    "layers.14.depth_act.lambdas": (4,),
    "layers.14.depth_act.init_v": (4,),
    "out_c.0.weight": (960, 160, 1, 1),
    "classifier.2.weight": (1280, 960),
    "classifier.5.weight": (527, 1280),
}

PUBLISHED_PARAMS_M = {0.4: 1.97, 1.0: 10.57, 2.0: 40.02}  # EfficientAT's README (millions)


def layout_digest(state: dict[str, torch.Tensor]) -> str:
    lines = "\n".join(f"{key} {tuple(value.shape)}" for key, value in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.parametrize("name", DYMN_NAMES)
def test_every_released_dymn_has_the_upstream_key_layout(name):
    spec = released(name)
    model = spec.build_model()
    state = model.state_dict()
    count, params, digest = UPSTREAM_LAYOUT[(spec.width, spec.dynamic_blocks, spec.num_classes)]
    assert len(state) == count
    assert sum(p.numel() for p in model.parameters()) == params
    assert layout_digest(state) == digest


def test_dymn10_keys_derived_by_hand_and_published_sizes():
    state = create_dymn(1.0).state_dict()
    for key, shape in DYMN10_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert "layers.0.exp_conv.weight" not in state
    replace_se = create_dymn(1.0, dynamic_blocks="replace_se").state_dict()
    assert "layers.1.block.0.0.weight" in replace_se and "layers.1.context_gen.joint_conv.weight" not in replace_se
    assert "layers.3.context_gen.joint_conv.weight" in replace_se  # dynamic where MobileNetV3 has SE
    for width, published in PUBLISHED_PARAMS_M.items():
        count = sum(p.numel() for p in create_dymn(width).parameters())
        # the README's figures (DeepSpeed's profiler) are 0.1-0.5 % above the tensors' exact counts,
        # which UPSTREAM_LAYOUT holds
        assert 0 < published - count / 1e6 < 0.006 * published


def test_registry_entries():
    assert all(name in RELEASED for name in DYMN_NAMES)
    assert released("dymn20_as").file == "dymn20_as_mAP_493.pt" and released("dymn20_as(1)").file == "dymn20_as.pt"
    assert released("dymn10_replace_se_as").file == "dymn10_replace_se_as.pt"  # no leading space
    assert released("dymn20_as(2)").url.endswith("/v0.0.1/dymn20_as_mAP_489.pt")
    assert released("dymn04_as").published_map == 0.450 and released("dymn10_as").published_map == 0.477
    assert released("dymn20_as(1)").published_map == 0.491 and released("dymn20_as").published_map is None
    assert released("dymn20_as").published_params_m == 40.02 and released("dymn20_as").published_macs_g == 2.2
    for name in DYMN_NAMES:
        spec = released(name)
        assert spec.family == "dymn" and spec.sha256 is None
        imagenet = name.endswith("_im")
        assert spec.num_classes == (1000 if imagenet else 527)
        assert spec.temperature == (30.0 if imagenet else 1.0)
        assert spec.n_mels == 128 and spec.hop_length == 320  # the mn models' front-end


def _nontrivial(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random context weights and BatchNorm statistics, so a mixed-up tensor would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_mean"):
                value.copy_(0.2 * torch.randn(value.shape, generator=generator))
            elif key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif any(part in key for part in ("residuals", "coef_net", "conv_f", "conv_t")):
                value.copy_(0.1 * torch.randn(value.shape, generator=generator))
    return model


@pytest.mark.parametrize("name", ["dymn04_as", "dymn04_replace_se_as"])
def test_a_saved_state_dict_loads_strictly_and_reproduces_logits(tmp_path, name):
    source = load_teacher(name, random_init=True, seed=2)
    _nontrivial(source.model, seed=5)
    path = tmp_path / released(name).file
    torch.save(source.model.state_dict(), path)
    loaded = load_teacher(name, checkpoint=path)
    assert not loaded.provenance.random_init
    assert loaded.provenance.architecture == {"width": 0.4, "head": "mlp", "strides": [2, 2, 2, 2], "num_classes": 527,
                                              "family": "dymn", "dynamic_blocks": released(name).dynamic_blocks,
                                              "temperature": 1.0}
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), source(wave), rtol=0, atol=0)


def test_checkpoint_of_the_other_block_layout_names_its_keys(tmp_path):
    path = tmp_path / "replace_se.pt"
    torch.save(create_dymn(0.4, dynamic_blocks="replace_se").state_dict(), path)
    with pytest.raises(TeacherError, match=r"missing: layers\.0\.context_gen.*unexpected: layers\.0\.block"):
        load_teacher("dymn04_as", checkpoint=path)
    torch.save(create_dymn(0.4, num_classes=1000).state_dict(), path)
    with pytest.raises(TeacherError, match="1000 classes but 527 are needed.*ImageNet start point"):
        load_teacher("dymn04_im", checkpoint=path, num_classes=527)


def test_random_init_logits_depend_on_the_input_and_eval_is_deterministic(caplog):
    tagger = load_teacher("dymn04_as", random_init=True, seed=1)
    assert "RANDOM-INIT TEACHER: dymn04_as" in caplog.text
    generator = torch.Generator().manual_seed(0)
    seconds = torch.arange(32000) / 32000
    waves = torch.stack([0.3 * torch.randn(32000, generator=generator),
                         0.5 * torch.sin(2 * math.pi * 440 * seconds),
                         0.01 * torch.randn(32000, generator=generator).cumsum(0) / 100])
    with torch.no_grad():
        batch = tagger(waves)
        again = tagger(waves)
        alone = torch.cat([tagger(w[None]) for w in waves])
    assert torch.isfinite(batch).all() and batch.abs().max() < 1e3
    assert (batch - batch.mean(dim=0)).abs().max() > 1e-3  # different clips, different logits
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)  # each clip's kernels are its own


# ---------------------------------------------------------------------------------------------
# The dynamic parts against hand computations.


def test_dynamic_conv_mixes_kernels_by_softmax_over_temperature():
    conv = DynamicConv(2, 1, context=1, kernel=1, kernels=2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))  # kernel 0 picks channel 0, kernel 1 channel 1
        conv.residuals[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        conv.residuals[0].bias.zero_()
    c = math.log(3) / 2  # attention logits (c, −c): softmax = (3/4, 1/4)
    x = torch.tensor([[4.0, 8.0]])[:, :, None, None].repeat(2, 1, 1, 3)
    context = torch.tensor([[c], [-c]])
    out = conv(x, context)
    assert out.shape == (2, 1, 1, 3)
    torch.testing.assert_close(out[0], torch.full((1, 1, 3), 0.75 * 4 + 0.25 * 8))
    torch.testing.assert_close(out[1], torch.full((1, 1, 3), 0.25 * 4 + 0.75 * 8))  # clip 2: its own kernel
    conv.temperature = 2.0  # logits halved: weights ∝ (√3, 1)
    share = math.sqrt(3) / (1 + math.sqrt(3))
    torch.testing.assert_close(conv(x, context)[0], torch.full((1, 1, 3), share * 4 + (1 - share) * 8))


def test_depthwise_dynamic_conv_strided_by_hand():
    conv = DynamicConv(1, 1, context=1, kernel=3, stride=2, groups=1, kernels=2)
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1.0
    with torch.no_grad():
        conv.weight.copy_(torch.stack([centre.flatten(), torch.ones(9)])[None, None])
        conv.residuals[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        conv.residuals[0].bias.zero_()
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = conv(x, torch.tensor([[math.log(3) / 2]]))  # 3/4 · identity + 1/4 · 3×3 box sum, zero-padded
    padded = torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1))
    expected = torch.tensor([[0.75 * x[0, 0, i, j].item() + 0.25 * padded[i:i + 3, j:j + 3].sum().item()
                              for j in (0, 2, 4)] for i in (0, 2, 4)])
    torch.testing.assert_close(out[0, 0], expected)
    assert expected[0, 0].item() == pytest.approx(0.25 * (0 + 1 + 5 + 6))
    # the depthwise case (groups = channels) gives each channel its own kernel
    depthwise = DynamicConv(2, 2, context=1, kernel=3, stride=2, groups=2, kernels=2)
    with torch.no_grad():
        depthwise.weight.copy_(torch.stack([torch.cat([centre.flatten(), 2 * centre.flatten()]),
                                            torch.cat([torch.ones(9), -torch.ones(9)])])[None, None])
        depthwise.residuals[0].weight.copy_(conv.residuals[0].weight)
        depthwise.residuals[0].bias.zero_()
    out2 = depthwise(torch.cat([x, x], dim=1), torch.tensor([[math.log(3) / 2]]))
    torch.testing.assert_close(out2[0, 0], expected)
    box = expected - 0.75 * x[0, 0, ::2, ::2]
    torch.testing.assert_close(out2[0, 1], 1.5 * x[0, 0, ::2, ::2] - box)


def test_dynamic_relu_is_the_max_of_predicted_lines():
    relu = DynamicReLU(channels=1, context=1, pieces=2)
    assert torch.equal(relu(torch.tensor([-1.0, 2.0]).view(1, 1, 1, 2), torch.zeros(1, 1)),
                       torch.tensor([0.0, 2.0]).view(1, 1, 1, 2))  # fresh: a plain ReLU
    with torch.no_grad():  # 2σ(±ln 3) − 1 = ±1/2: θ = (1/2, −1/2, 1/2, 0)
        relu.coef_net[0].bias.copy_(torch.tensor([math.log(3), -math.log(3), math.log(3), 0.0]))
    # slopes 1 + 1/2 and −1/2, offsets 1/2 · 1/2 and 0: f(x) = max(1.5x + 0.25, −0.5x)
    x = torch.tensor([-2.0, -0.125, 0.0, 1.0]).view(1, 1, 1, 4)
    torch.testing.assert_close(relu(x, torch.zeros(1, 1)), torch.tensor([1.0, 0.0625, 0.25, 1.75]).view(1, 1, 1, 4))


def _hardswish(v: float) -> float:
    return v * min(max(v + 3, 0.0), 6.0) / 6


@pytest.mark.parametrize("stride", [1, 2])
def test_context_generator_by_hand(stride):
    gen = ContextGenerator(in_ch=1, context=1, exp_ch=1, stride=stride).eval()
    with torch.no_grad():
        gen.joint_conv.weight.fill_(1.0)
        gen.joint_norm.running_var.fill_(1.0 - gen.joint_norm.eps)  # an exact identity
        for conv in (gen.conv_f, gen.conv_t):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(1, 1, 2, 3)
    freq = [_hardswish(2.0), _hardswish(5.0)]  # the mean over time of each bin
    time = [_hardswish(2.5), _hardswish(3.5), _hardswish(4.5)]  # the mean over frequency of each frame
    ctx = gen(x)
    assert ctx.vector.item() == pytest.approx(sum(freq + time) / 5)
    if stride == 1:
        expected_f, expected_t = freq, time
    else:  # 3-tap mean with stride 2, zero padding counted
        expected_f = [(0 + freq[0] + freq[1]) / 3]
        expected_t = [(0 + time[0] + time[1]) / 3, (time[1] + time[2] + 0) / 3]
    assert ctx.freq_gate.shape == (1, 1, len(expected_f), 1) and ctx.time_gate.shape == (1, 1, 1, len(expected_t))
    assert ctx.freq_gate.flatten().tolist() == pytest.approx(expected_f)
    assert ctx.time_gate.flatten().tolist() == pytest.approx(expected_t)


# ---------------------------------------------------------------------------------------------
# A whole dynamic block with fixed weights. The reference values were computed once with this
# construction and agree with EfficientAT's DY_Block given the same tensors (max |Δ| 1.2e-7,
# checked outside the suite); the temperature moves them by 0.05 / 0.19, so a block that ignored
# it, or mixed up the kernel attention, would fail.


def _fill(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for i, (key, value) in enumerate(sorted(model.state_dict().items())):
            if key.endswith(("num_batches_tracked", "lambdas", "init_v")):
                continue
            pos = torch.arange(value.numel(), dtype=torch.float64)
            if key.endswith("running_var"):
                filled = 0.5 + torch.sin(0.7 * pos + i) ** 2
            elif key.endswith("running_mean"):
                filled = 0.1 * torch.sin(1.3 * pos + i)
            elif key.endswith("norm.weight"):
                filled = 1 + 0.25 * torch.sin(0.9 * pos + i)
            else:
                filled = 0.5 * torch.sin(0.61 * pos + 0.37 * i)
            value.copy_(filled.view(value.shape).to(value.dtype))
    return model


def _block_input() -> torch.Tensor:
    c = torch.arange(8, dtype=torch.float64)[:, None, None]
    f = torch.arange(6, dtype=torch.float64)[None, :, None]
    t = torch.arange(10, dtype=torch.float64)[None, None, :]
    first = torch.sin(0.9 * c + 0.5 * f - 0.3 * t) + 0.2 * c - 0.5
    return torch.stack([first, torch.cos(first * 1.7) * 1.5]).float()


BLOCK_REFERENCE = {
    # stride, kernel, out: (shape, sum, out[0, :, 0, 0], out[1, 2, :, 1])
    (1, 3, 8): ((2, 8, 6, 10), 534.83197,
                [-0.582148, 0.6378, 1.329588, 0.879322, 0.207378, -0.172924, -0.149971, 0.676049],
                [0.507786, 0.773013, 1.472221, 1.970933, 1.551958, 0.628607]),
    (2, 5, 16): ((2, 16, 3, 5), 46.306267,
                 [-0.319277, 0.393861, 0.249918, 0.341437, 0.482168, 0.120651, 0.207545, -0.718506,
                  -0.273019, -0.771166, 0.066736, -0.027057, 0.310032, 0.46316, 0.340948, 0.676502],
                 [0.240685, 0.227574, 0.266425]),
}


@pytest.mark.parametrize("stride,kernel,out_ch", sorted(BLOCK_REFERENCE))
def test_fixed_weights_block_reference(stride, kernel, out_ch):
    block = _fill(DynamicBlock(8, kernel, 16, out_ch, True, stride, DyMNConfig(width=0.25))).eval()
    assert block.context_gen.joint_conv.out_channels == 8  # H = clip(16 // 4 → 8, 8, 32)
    shape, total, column, row = BLOCK_REFERENCE[(stride, kernel, out_ch)]
    with torch.no_grad():
        out = block(_block_input())
    assert tuple(out.shape) == shape
    assert out.sum().item() == pytest.approx(total, abs=1e-3)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(column), rtol=0, atol=2e-5)
    torch.testing.assert_close(out[1, 2, :, 1], torch.tensor(row), rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# The commands: a DyMN alone, an ensemble mixing DyMN and mn, predict and evaluate's teacher row.


def _corpus(tmp_path):
    return tone_noise_corpus(tmp_path, seconds=0.5)


def test_logits_with_a_dymn_and_a_mixed_ensemble_feed_the_teacher_row(tmp_path):
    datafile = _corpus(tmp_path)
    common = ["--random-init", "--batch-size", "2", "--workers", "1", "--clip-seconds", "0.5",
              "--store-dtype", "float32", "--datafile", str(datafile)]
    single, mixed = tmp_path / "dymn.h5", tmp_path / "mixed.h5"
    assert main(["logits", "--teacher", "dymn04_as", "--out", str(single), *common]) == 0
    assert main(["logits", "--teacher", "dymn04_as", "mn01_as", "--out", str(mixed), *common]) == 0
    alone, both = LogitsStore(single), LogitsStore(mixed)
    assert alone.attrs["teacher"] == "dymn04_as" and both.attrs["teacher"] == "ensemble(dymn04_as,mn01_as)"
    members = json.loads(both.attrs["members"])
    assert [m["architecture"].get("family", "mn") for m in members] == ["dymn", "mn"]
    ids = [f"c{i}" for i in range(4)]
    values, present = alone.fetch(ids)
    assert present.all() and np.isfinite(values).all() and np.ptp(values, axis=0).max() > 1e-4
    mixed_values, _ = both.fetch(ids)
    assert not np.allclose(mixed_values, values)
    targets = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    row = teacher_row(open_teacher_store(mixed, 2), ids, targets, multi_label=True)
    assert row.name == "teacher ensemble(dymn04_as,mn01_as)" and row.clips == 4 and "mAP" in row.metrics


def test_predict_with_a_dymn_teacher(tmp_path, capsys):
    _corpus(tmp_path)
    assert main(["predict", str(tmp_path / "c0.wav"), "--teacher", "dymn04_as", "mn01_as", "--random-init",
                 "--labels", str(tmp_path / "class_labels_indices.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["name"] == "dymn04_as+mn01_as" and result["model"]["random_init"]
    assert [m["name"] for m in result["model"]["members"]] == ["dymn04_as", "mn01_as"]
    assert len(result["files"][0]["pooled"]["top"]) == 2

"""The PaSST teachers: every released layout loads strictly under upstream's key names, a fixed-weights
reference of the forward, frame counts and the time-embedding cut, random-init behaviour and the
commands (fat logits alone and in an ensemble with DyMN, the evaluate teacher row, fat predict)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.cli import main
from pipeline.evaluate.teacher import open_teacher_store, teacher_row
from pipeline.store import LogitsStore
from teacher import FrontEndConfig, PaSST, PaSSTConfig, TeacherError, expand_names, load_teacher
from teacher.registry import ENSEMBLES, RELEASED, released
from teacher.teacher import load_weights
from tests.teacher_fixtures import tone_noise_corpus

# Every released AudioSet PaSST, read from upstream's models/passt.py (default_cfgs, get_model, the
# model functions) and hear21passt: name → (blocks, patch stride, time positions, STFT hop, file).
# Time positions = input_tdim // stride (998 for the 10-s models, 2000 / 3000 for the 20 / 30-s
# ones, 3200 / 2000 for the STFT-hop 100 / 160 ones); frequency rows = 128 // stride.
PASST_LAYOUTS = {
    "passt_s_kd_p16_128_ap486": (12, 10, 99, 320, "passt-s-kd-ap.486.pt"),
    "passt_s_swa_p16_128_ap476": (12, 10, 99, 320, "passt-s-f128-p16-s10-ap.476-swa.pt"),
    "passt_s_swa_p16_128_ap4761": (12, 10, 99, 320, "passt-s-f128-p16-s10-ap.4761-swa.pt"),
    "passt_s_p16_128_ap472": (12, 10, 99, 320, "passt-s-f128-p16-s10-ap.472.pt"),
    "passt_s_swa_p16_s12_128_ap473": (12, 12, 83, 320, "passt-s-f128-p16-s12-ap.473-swa.pt"),
    "passt_s_p16_s12_128_ap470": (12, 12, 83, 320, "passt-s-f128-p16-s12-ap.470.pt"),
    "passt_s_swa_p16_s14_128_ap471": (12, 14, 71, 320, "passt-s-f128-p16-s14-ap.471-swa.pt"),
    "passt_s_p16_s14_128_ap469": (12, 14, 71, 320, "passt-s-f128-p16-s14-ap.469.pt"),
    "passt_s_swa_p16_s16_128_ap473": (12, 16, 62, 320, "passt-s-f128-p16-s16-ap.473-swa.pt"),
    "passt_s_p16_s16_128_ap468": (12, 16, 62, 320, "passt-s-f128-p16-s16-ap.468.pt"),
    "passt_s_f128_20sec_p16_s10_ap474": (12, 10, 200, 320, "passt-s-f128-20sec-p16-s10-ap.474-swa.pt"),
    "passt_s_f128_30sec_p16_s10_ap473": (12, 10, 300, 320, "passt-s-f128-30sec-p16-s10-ap.473-swa.pt"),
    "passt_s_swa_f128_stfthop100_p16_s10_ap473": (12, 10, 320, 100, "passt-s-f128-stfthop100-p16-s10-ap.473-swa.pt"),
    "passt_s_swa_f128_stfthop160_p16_s10_ap473": (12, 10, 200, 160, "passt-s-f128-stfthop160-p16-s10-ap.473-swa.pt"),
    "passt_l_kd_p16_128_ap47": (7, 10, 99, 320, "passt-l-kd-ap.47.pt"),
}
# Upstream's PaSST-S (12 blocks, 10-s time positions) has 159 state-dict entries and 86,153,758 values.
PASST_S_VALUES = 86_153_758


def upstream_layout(depth: int, stride: int, columns: int, classes: int = 527, dim: int = 768) -> dict:
    """The state-dict keys and shapes of upstream's PaSST (distilled: cls and dist tokens, head and head_dist)."""
    layout = {
        "cls_token": (1, 1, dim), "dist_token": (1, 1, dim), "new_pos_embed": (1, 2, dim),
        "freq_new_pos_embed": (1, dim, 128 // stride, 1), "time_new_pos_embed": (1, dim, 1, columns),
        "patch_embed.proj.weight": (dim, 1, 16, 16), "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        layout.update({
            f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
            f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
            f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
            f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
            f"blocks.{i}.mlp.fc1.weight": (4 * dim, dim), f"blocks.{i}.mlp.fc1.bias": (4 * dim,),
            f"blocks.{i}.mlp.fc2.weight": (dim, 4 * dim), f"blocks.{i}.mlp.fc2.bias": (dim,),
        })
    layout.update({
        "norm.weight": (dim,), "norm.bias": (dim,),
        "head.0.weight": (dim,), "head.0.bias": (dim,), "head.1.weight": (classes, dim), "head.1.bias": (classes,),
        "head_dist.weight": (classes, dim), "head_dist.bias": (classes,),
    })
    return layout


@pytest.mark.parametrize("name", sorted(PASST_LAYOUTS))
def test_every_released_passt_loads_its_upstream_layout_strictly(name):
    depth, stride, columns, hop, file = PASST_LAYOUTS[name]
    spec = released(name)
    assert (spec.family, spec.file, spec.hop_length, spec.n_mels) == ("passt", file, hop, 128)
    expected = upstream_layout(depth, stride, columns)
    with torch.device("meta"):  # shapes only: no 86M values drawn
        model = spec.build_model()
        state = {key: torch.empty(shape) for key, shape in expected.items()}
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == expected
    load_weights(model, state, file)  # strict: same keys, same shapes
    if depth == 12 and columns == 99:
        assert sum(p.numel() for p in model.parameters()) == PASST_S_VALUES


def test_a_checkpoint_of_another_stride_names_its_mis_shaped_keys():
    with torch.device("meta"):
        model = released("passt_s_swa_p16_s16_128_ap473").build_model()
        state = {key: torch.empty(shape) for key, shape in upstream_layout(12, 10, 99).items()}
    with pytest.raises(TeacherError, match=r"checkpoint does not fit.*mis-shaped.*freq_new_pos_embed \(1, 768, 12, 1\) "
                                           r"vs \(1, 768, 8, 1\)"):
        load_weights(model, state, "s10.pt")
    with torch.device("meta"):
        light = released("passt_l_kd_p16_128_ap47").build_model()
    with pytest.raises(TeacherError, match=r"unexpected: blocks\.7\."):
        load_weights(light, state, "passt-s.pt")


def test_registry_entries_and_ensembles():
    names = [name for name, spec in RELEASED.items() if spec.family == "passt"]
    assert sorted(names) == sorted(PASST_LAYOUTS)
    kd = released("passt_s_kd_p16_128_ap486")
    assert kd.url == "https://github.com/kkoutini/PaSST/releases/download/v.0.0.9/passt-s-kd-ap.486.pt"
    assert released("passt_s_swa_p16_128_ap476").url == (
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt")
    assert released("passt_l_kd_p16_128_ap47").url.endswith("/v.0.0.10/passt-l-kd-ap.47.pt")
    assert released("passt_s_f128_30sec_p16_s10_ap473").url.endswith("/v0.0.5/" + PASST_LAYOUTS[
        "passt_s_f128_30sec_p16_s10_ap473"][4])
    assert kd.published_map == 0.486 and released("passt_s_swa_p16_128_ap4761").published_map == 0.4761
    assert all(RELEASED[n].sha256 is None and RELEASED[n].num_classes == 527 for n in names)
    # upstream's ensembles: 9 models (0.4956, EfficientAT's distillation source), 5, 4 and strides 16 + 14
    assert len(expand_names(["passt_ensemble_many"])) == 9 and ENSEMBLES["passt_ensemble_many"].published_map == 0.4956
    assert len(expand_names(["passt_ensemble_5"])) == 5 and len(expand_names(["passt_ensemble_4"])) == 4
    assert expand_names(["passt_ensemble_s16_14", "dymn04_as"]) == [
        "passt_s_swa_p16_s14_128_ap471", "passt_s_swa_p16_s16_128_ap473", "dymn04_as"]
    # the 10-s front end of the released models: fmin_aug_range 10 / fmax_aug_range 2000 → 0–15000 Hz
    frontend = kd.frontend_config()
    assert (frontend.eval_fmax, frontend.fmin, frontend.win_length, frontend.n_fft) == (15000.0, 0.0, 800, 1024)
    assert kd.architecture(527) == {"family": "passt", "embed_dim": 768, "depth": 12, "num_heads": 12,
                                    "patch_size": 16, "stride": [10, 10], "input_frames": 998, "num_classes": 527}


# ---------------------------------------------------------------------------------------------
# Frame counts and the time position embedding


@pytest.mark.parametrize("name,seconds,frames,patch_columns,used", [
    ("passt_s_kd_p16_128_ap486", 10, 1000, 99, 99),
    ("passt_s_kd_p16_128_ap486", 20, 2000, 199, 99),  # longer than its positions: cut to the first 99
    ("passt_s_swa_p16_s12_128_ap473", 10, 1000, 83, 83),
    ("passt_s_swa_p16_s14_128_ap471", 10, 1000, 71, 71),
    ("passt_s_swa_p16_s16_128_ap473", 10, 1000, 62, 62),
    ("passt_s_f128_20sec_p16_s10_ap474", 10, 1000, 99, 99),  # first 99 of 200 positions
    ("passt_s_f128_20sec_p16_s10_ap474", 20, 2000, 199, 199),
    ("passt_s_f128_30sec_p16_s10_ap473", 30, 3000, 299, 299),
    ("passt_s_f128_30sec_p16_s10_ap473", 20, 2000, 199, 199),
    ("passt_s_swa_f128_stfthop100_p16_s10_ap473", 10, 3200, 319, 319),
    ("passt_s_swa_f128_stfthop160_p16_s10_ap473", 10, 2000, 199, 199),
])
def test_frame_counts_and_time_columns(name, seconds, frames, patch_columns, used):
    spec = released(name)
    assert spec.frontend_config().frames(seconds * 32000) == frames
    cfg = spec.model_config()
    assert cfg.patch_columns(frames) == patch_columns and cfg.used_columns(frames) == used


def _tiny(input_frames: int, seed: int = 0, **kw) -> PaSST:
    """A small PaSST with random non-trivial weights everywhere (norms and biases included)."""
    model = PaSST(PaSSTConfig(num_classes=5, embed_dim=16, depth=2, num_heads=4, input_frames=input_frames, **kw))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            scale = ("norm" in key or key.startswith("head.0")) and key.endswith("weight")
            value.copy_(0.3 * torch.randn(value.shape, generator=generator) + float(scale))
    return model.eval()


@pytest.mark.parametrize("seconds", [10, 20, 30])
def test_the_time_embedding_is_cut_to_the_input_and_a_longer_input_to_the_embedding(seconds):
    """A 20-s layout (200 time positions) on 10 / 20 / 30-s mel: 99 / 199 / 200 columns reach the blocks.
    (16 mel bins, one patch row, keep it fast; the time axis is the released models'.)"""
    model = _tiny(2000, n_mels=16)
    frames = FrontEndConfig().frames(seconds * 32000)
    used = {10: 99, 20: 199, 30: 200}[seconds]
    lengths = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    mel = torch.randn(1, 1, 16, frames, generator=torch.Generator().manual_seed(1))
    positions = model.time_new_pos_embed.data
    kept = positions.clone()
    shift = torch.randn(positions.shape, generator=torch.Generator().manual_seed(2))  # not constant: norms remove that
    with torch.no_grad():
        logits = model(mel)
        positions[..., used:] += shift[..., used:]  # positions past the input: no effect
        assert torch.equal(model(mel), logits)
        positions[..., used - 1] += shift[..., used - 1]  # the last position used: an effect
        assert not torch.allclose(model(mel), logits)
        positions.copy_(kept)
        covered = (used - 1) * 10 + 16  # frames the used patch columns cover
        tail = mel.clone()
        tail[..., covered:] = 0.0  # for 30 s: the last ~10 s, cut as upstream cuts it
        assert torch.equal(model(tail), logits)
        tail[..., covered - 1] = 0.0
        assert not torch.allclose(model(tail), logits)
    assert lengths[0] == 2 + used and frames - covered == {10: 4, 20: 4, 30: 994}[seconds]


def _reference_logits(model: PaSST, mel: torch.Tensor) -> torch.Tensor:
    """The forward written out with plain tensor ops from upstream's description (no module calls)."""
    s = model.state_dict()
    cfg = model.cfg
    heads, dim = cfg.num_heads, cfg.embed_dim
    x = F.conv2d(mel, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=cfg.stride)
    columns = min(x.shape[3], s["time_new_pos_embed"].shape[3])
    x = x[..., :columns] + s["time_new_pos_embed"][..., :columns]
    x = x + s["freq_new_pos_embed"]
    rows = [x[:, :, f, t] for f in range(x.shape[2]) for t in range(columns)]  # frequency-major order
    tokens = torch.stack([s["cls_token"][:, 0] + s["new_pos_embed"][:, 0],
                          s["dist_token"][:, 0] + s["new_pos_embed"][:, 1]], dim=1).expand(mel.shape[0], -1, -1)
    x = torch.cat([tokens, torch.stack(rows, dim=1)], dim=1)

    def norm(v, key, eps):
        return F.layer_norm(v, (dim,), s[key + ".weight"], s[key + ".bias"], eps)

    for i in range(cfg.depth):
        p = f"blocks.{i}."
        h = norm(x, p + "norm1", 1e-6)
        q, k, v = (h @ s[p + "attn.qkv.weight"].T + s[p + "attn.qkv.bias"]).split(dim, dim=-1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        mixed = (weights @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + mixed @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
        h = norm(x, p + "norm2", 1e-6)
        h = F.gelu(h @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"])
        x = x + h @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
    x = norm(x, "norm", 1e-6)
    features = (x[:, 0] + x[:, 1]) / 2
    return norm(features, "head.0", 1e-5) @ s["head.1.weight"].T + s["head.1.bias"]


@pytest.mark.parametrize("stride,frames", [(10, 40), (10, 130), (12, 64), (16, 100)])
def test_fixed_weights_reference(stride, frames):
    model = _tiny(100, seed=stride, stride=(stride, stride))
    mel = torch.randn(2, 1, 128, frames, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        torch.testing.assert_close(model(mel), _reference_logits(model, mel), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(mel)[0], model(mel)[1])
    assert model.head[0].eps == 1e-5 and model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6


def test_bad_inputs_are_named():
    model = _tiny(100)
    with pytest.raises(TeacherError, match="expects 128 mel bins, got 64"):
        model(torch.zeros(1, 1, 64, 100))
    with pytest.raises(TeacherError, match="at least 16 frames, got 15"):
        model(torch.zeros(1, 1, 128, 15))
    with pytest.raises(TeacherError, match="embed_dim divisible by num_heads"):
        PaSST(PaSSTConfig(embed_dim=10, num_heads=4))
    with pytest.raises(TeacherError, match="48 mel bins at frequency stride 12 give 3 patch rows but 4 frequency"):
        PaSST(PaSSTConfig(n_mels=48, stride=(12, 12)))


# ---------------------------------------------------------------------------------------------
# Random init and a saved checkpoint


@pytest.fixture(scope="module")
def random_passt():
    return load_teacher("passt_s_kd_p16_128_ap486", random_init=True, seed=1)


def test_random_init_logits_depend_on_the_input(random_passt, caplog):
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 32000
    waves = torch.stack([0.3 * torch.randn(8000, generator=generator), 0.5 * torch.sin(2 * math.pi * 440 * t),
                         0.01 * torch.randn(8000, generator=generator).cumsum(0) / 100])
    with torch.no_grad():
        batch = random_passt(waves)
        alone = torch.cat([random_passt(w[None]) for w in waves])
    assert batch.shape == (3, 527) and torch.isfinite(batch).all()
    assert (batch - batch.mean(dim=0)).abs().max() > 1e-2  # different clips, different logits
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    prov = random_passt.provenance
    assert prov.random_init and prov.checkpoint_sha256 is None and prov.architecture["family"] == "passt"
    assert prov.frontend["fmax"] == 15000.0 and prov.frontend["hop_length"] == 320


def test_a_saved_checkpoint_loads_through_load_teacher(tmp_path):
    """PaSST-L (7 blocks) saved in half precision, as some upstream files are, then loaded by name."""
    source = load_teacher("passt_l_kd_p16_128_ap47", random_init=True, seed=3)
    state = {key: value.half() for key, value in source.model.state_dict().items()}
    source.model.load_state_dict(state)  # the same rounded weights on both sides
    path = tmp_path / released("passt_l_kd_p16_128_ap47").file
    torch.save(state, path)
    loaded = load_teacher("passt_l_kd_p16_128_ap47", checkpoint=path)
    assert not loaded.provenance.random_init and loaded.provenance.checkpoint_sha256
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), source(wave), rtol=0, atol=0)
    flat = {**state, "patch_embed.proj.weight": state["patch_embed.proj.weight"].reshape(768, 256)}
    torch.save(flat, path)  # the patch projection as a matrix, as upstream's loader also takes it
    with torch.no_grad():
        torch.testing.assert_close(load_teacher("passt_l_kd_p16_128_ap47", checkpoint=path)(wave), source(wave),
                                   rtol=0, atol=0)
    torch.save({**state, "head.1.bias": torch.zeros(3), "head.1.weight": torch.zeros(3, 768)}, path)
    with pytest.raises(TeacherError, match="3 classes but 527 are needed"):
        load_teacher("passt_l_kd_p16_128_ap47", checkpoint=path)


# ---------------------------------------------------------------------------------------------
# The commands: PaSST alone and with DyMN, the evaluate teacher row, predict.


def _corpus(tmp_path):
    return tone_noise_corpus(tmp_path, seconds=0.25)


def test_logits_with_passt_alone_and_with_dymn_feed_the_teacher_row(tmp_path, caplog):
    datafile = _corpus(tmp_path)
    common = ["--random-init", "--batch-size", "2", "--workers", "1", "--clip-seconds", "0.25",
              "--store-dtype", "float32", "--datafile", str(datafile)]
    single, mixed = tmp_path / "passt.h5", tmp_path / "mixed.h5"
    assert main(["logits", "--teacher", "passt_s_kd_p16_128_ap486", "--out", str(single), *common]) == 0
    assert "RANDOM-INIT TEACHER: passt_s_kd_p16_128_ap486" in caplog.text
    assert main(["logits", "--teacher", "passt_s_kd_p16_128_ap486", "dymn04_as", "--out", str(mixed), *common]) == 0
    alone, both = LogitsStore(single), LogitsStore(mixed)
    assert alone.attrs["teacher"] == "passt_s_kd_p16_128_ap486" and bool(alone.attrs["random_init"])
    assert both.attrs["teacher"] == "ensemble(passt_s_kd_p16_128_ap486,dymn04_as)"
    members = json.loads(both.attrs["members"])
    assert [m["architecture"].get("family") for m in members] == ["passt", "dymn"]
    assert members[0]["published_mAP"] == 0.486 and members[0]["frontend"]["fmax"] == 15000.0
    ids = [f"c{i}" for i in range(4)]
    values, present = alone.fetch(ids)
    assert present.all() and np.isfinite(values).all() and np.ptp(values, axis=0).max() > 1e-3
    mixed_values, _ = both.fetch(ids)
    assert not np.allclose(mixed_values, values)
    targets = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    row = teacher_row(open_teacher_store(mixed, 2), ids, targets, multi_label=True)
    assert row.name == "teacher ensemble(passt_s_kd_p16_128_ap486,dymn04_as)" and row.clips == 4
    assert "mAP" in row.metrics and row.notes  # flagged: random init


def test_predict_with_a_passt_teacher(tmp_path, capsys):
    _corpus(tmp_path)
    assert main(["predict", str(tmp_path / "c0.wav"), "--teacher", "passt_l_kd_p16_128_ap47", "--random-init",
                 "--window", "0.25", "--labels", str(tmp_path / "class_labels_indices.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["name"] == "passt_l_kd_p16_128_ap47" and result["model"]["random_init"]
    assert result["model"]["members"][0]["architecture"]["depth"] == 7
    assert len(result["files"][0]["pooled"]["top"]) == 2

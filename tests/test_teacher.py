"""The teacher package: the released key layout, strict loading, errors, downloads, the registry."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

import teacher
from teacher import CheckpointUnavailable, TeacherError, create_mn, load_teacher
from teacher.registry import MIRROR_ENV, RELEASED, expand_names, released

# Parameter counts of the released widths as EfficientAT's README states them (millions, 3-4 digits).
PUBLISHED_PARAMS_M = {0.4: 0.983, 0.5: 1.43, 1.0: 4.88, 2.0: 17.91, 3.0: 39.09, 4.0: 68.43}

# A sample of mn10's published state-dict layout: key → shape.
MN10_KEYS = {
    "features.0.0.weight": (16, 1, 3, 3),
    "features.0.1.running_var": (16,),
    "features.1.block.0.0.weight": (16, 1, 3, 3),  # block 1: depthwise first (no expansion)
    "features.1.block.1.0.weight": (16, 16, 1, 1),
    "features.2.block.0.0.weight": (64, 16, 1, 1),
    "features.2.block.1.0.weight": (64, 1, 3, 3),
    "features.2.block.2.0.weight": (24, 64, 1, 1),
    "features.4.block.1.0.weight": (72, 1, 5, 5),
    "features.4.block.2.conc_se_layers.0.fc1.weight": (24, 72),
    "features.4.block.2.conc_se_layers.0.fc2.bias": (72,),
    "features.4.block.3.0.weight": (40, 72, 1, 1),  # projection moves behind the excitation
    "features.12.block.2.conc_se_layers.0.fc1.weight": (168, 672),
    "features.15.block.3.1.num_batches_tracked": (),
    "features.16.0.weight": (960, 160, 1, 1),
    "classifier.2.weight": (1280, 960),
    "classifier.5.weight": (527, 1280),
    "classifier.5.bias": (527,),
}


def test_mn10_has_the_published_key_layout():
    state = create_mn(1.0).state_dict()
    assert len(state) == 312
    for key, shape in MN10_KEYS.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("width", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_the_published_sizes(width):
    count = sum(p.numel() for p in create_mn(width).parameters())
    digits = 3 if width < 0.5 else 2  # the README gives this many decimals (rounded or cut)
    assert abs(count / 1e6 - PUBLISHED_PARAMS_M[width]) < 10**-digits


def test_fully_convolutional_head_layout_and_strides():
    model = create_mn(1.0, head="fully_convolutional", strides=(2, 2, 1, 1)).eval()
    state = model.state_dict()
    assert tuple(state["classifier.0.weight"].shape) == (527, 960, 1, 1)
    assert tuple(state["classifier.1.running_mean"].shape) == (527,)
    assert "classifier.5.weight" not in state
    assert model.classifier[1].eps == 1e-5 and model.features[1].block[0][1].eps == 1e-3
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 1, 128, 200))
        assert fmap.shape[2:] == (16, 25)  # strides (2,2,1,1) downsample 8×, not 32×
        assert model(torch.randn(2, 128, 200)).shape == (2, 527)


@pytest.mark.parametrize("name", ["mn01_as", "mn04_as", "mn10_as_mels_64", "mn10_as_fc_s2221"])
def test_a_saved_state_dict_loads_strictly_and_reproduces_logits(tmp_path, name):
    source = load_teacher(name, random_init=True, seed=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mixed-up buffer would show
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / released(name).file
    torch.save(source.model.state_dict(), path)
    loaded = load_teacher(name, checkpoint=path)
    assert not loaded.provenance.random_init
    assert loaded.provenance.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    wave = torch.randn(2, 12000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), source(wave), rtol=0, atol=0)


def test_wrapped_and_prefixed_checkpoints_load(tmp_path):
    state = create_mn(0.4).state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items() if "num_batches" not in k}}, path)
    assert load_teacher("mn04_as", checkpoint=path).provenance.checkpoint_file == str(path)


def test_checkpoint_of_another_width_names_the_mis_shaped_keys(tmp_path):
    path = tmp_path / "mn05.pt"
    torch.save(create_mn(0.5).state_dict(), path)
    with pytest.raises(TeacherError, match=r"mis-shaped.*features\.2\.block\.0\.0\.weight \(32, 8, 1, 1\) vs \(24, 8, 1, 1\)"):
        load_teacher("mn04_as", checkpoint=path)


def test_wrong_class_count_is_an_error(tmp_path):
    path = tmp_path / "ten.pt"
    torch.save(create_mn(0.4, num_classes=10).state_dict(), path)
    with pytest.raises(TeacherError, match="checkpoint has 10 classes but 527 are needed"):
        load_teacher("mn04_as", checkpoint=path)
    assert load_teacher("mn04_as", checkpoint=path, num_classes=10).num_classes == 10


def test_corrupt_and_code_carrying_checkpoints_are_refused(tmp_path):
    truncated = tmp_path / "cut.pt"
    torch.save(create_mn(0.4).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(TeacherError, match="not a readable weights-only checkpoint"):
        load_teacher("mn04_as", checkpoint=truncated)
    pickled = tmp_path / "code.pt"
    torch.save({"weights": functools.partial(print, "pwned")}, pickled)
    with pytest.raises(TeacherError, match="cut.pt|code.pt"):
        load_teacher("mn04_as", checkpoint=pickled)
    with pytest.raises(TeacherError, match="no such checkpoint"):
        load_teacher("mn04_as", checkpoint=tmp_path / "absent.pt")


def test_unknown_teacher_lists_the_known_ones():
    with pytest.raises(TeacherError, match="mn10_as.*mn_ensemble"):
        released("mn99_as")


def test_registry_covers_every_released_variant():
    for name in ("mn01_as", "mn02_as", "mn04_as", "mn05_as", "mn10_as", "mn20_as", "mn30_as", "mn40_as",
                 "mn40_as_ext", "mn40_as_no_im_pre", "mn10_as_hop_5", "mn10_as_hop_25", "mn10_as_mels_40",
                 "mn10_as_mels_256", "mn10_as_fc", "mn10_as_fc_s2211"):
        spec = released(name)
        assert spec.url.endswith(spec.file.replace("(", "%28").replace(")", "%29"))
    assert released("mn10_as").published_map == 0.471
    assert released("mn10_as_hop_15").hop_length == 480 and released("mn10_as_mels_40").n_mels == 40
    assert len(expand_names(["mn_ensemble"])) == 9
    assert all(spec.file.endswith(".pt") for spec in RELEASED.values())


@contextlib.contextmanager
def file_server(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/releases/"
    finally:
        server.shutdown()
        server.server_close()


def test_released_checkpoint_is_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "releases"
    mirror.mkdir(parents=True)
    spec = released("mn04_as")
    torch.save(create_mn(0.4).state_dict(), mirror / spec.file)
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    with file_server(tmp_path / "mirror") as base:
        monkeypatch.setenv(MIRROR_ENV, base)
        first = load_teacher("mn04_as")
    cached = tmp_path / "cache" / "teachers" / spec.file
    assert cached.is_file() and first.provenance.checkpoint_file == str(cached)
    assert [p.name for p in cached.parent.iterdir()] == [spec.file]  # no temporary left behind
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens: the cache must suffice
    assert load_teacher("mn04_as").provenance.checkpoint_sha256 == first.provenance.checkpoint_sha256


def test_offline_error_says_what_was_missing_and_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")
    with pytest.raises(CheckpointUnavailable) as error:
        load_teacher("mn10_as")
    message = str(error.value)
    assert "mn10_as_mAP_471.pt" in message and "--checkpoint PATH" in message
    assert not (tmp_path / "cache" / "teachers" / "mn10_as_mAP_471.pt").exists()


def test_sha256_mismatch_keeps_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "releases"
    mirror.mkdir()
    spec = released("mn04_as")
    torch.save(create_mn(0.4).state_dict(), mirror / spec.file)
    monkeypatch.setitem(RELEASED, "mn04_as", spec.__class__(**{**spec.__dict__, "sha256": "0" * 64}))
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    with file_server(tmp_path) as base:
        monkeypatch.setenv(MIRROR_ENV, base)
        with pytest.raises(CheckpointUnavailable, match="does not match the expected 0000"):
            load_teacher("mn04_as")
    assert not any((tmp_path / "cache" / "teachers").iterdir())


def test_random_init_is_seeded_recorded_loud_and_incompatible_with_a_checkpoint(tmp_path, caplog):
    a, b = (load_teacher("mn01_as", random_init=True, seed=7) for _ in range(2))
    assert "RANDOM-INIT TEACHER: mn01_as" in caplog.text
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert a.provenance.random_init and a.provenance.checkpoint_sha256 is None
    noise = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # calibrated BatchNorm statistics: different clips, different logits
        logits = a(noise * torch.tensor([[0.01], [0.1], [1.0]]))
    assert (logits - logits.mean(dim=0)).abs().max() > 1e-4  # uncalibrated, rows differ by ~1e-8
    with pytest.raises(TeacherError, match="exclude each other"):
        load_teacher("mn01_as", random_init=True, checkpoint=tmp_path / "x.pt")


def test_teacher_package_imports_neither_pipeline_nor_student():
    import ast

    for source in Path(teacher.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("pipeline", "student") for n in names), source

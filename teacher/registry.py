"""The released teacher checkpoints: EfficientAT's "mn" and "dymn" CNNs and PaSST's transformers.
Name → file, URL, network shape, front-end settings and the mAP its authors published (AudioSet
eval set).

EfficientAT's files are in its release v0.0.1 (the file name often encodes the mAP ×1000);
PaSST's are spread over several releases of kkoutini/PaSST, and their names end in the mAP
(upstream: "ap473 refers to the performance of this model on Audioset"). No sha256 is published
upstream, so `sha256` is None for all of them: fill one in (or pass a verified local file with
--checkpoint) to have downloads verified.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

from torch import nn

from teacher.dymn import DyMNConfig, DynamicMobileNet
from teacher.errors import TeacherError
from teacher.frontend import FrontEndConfig
from teacher.model import MNConfig, MobileNetAudio
from teacher.passt import PaSST, PaSSTConfig

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
PASST_RELEASES = "https://github.com/kkoutini/PaSST/releases/download/"
MIRROR_ENV = "FAT_TEACHER_MIRROR"  # a folder URL holding the same file names (offline mirrors, tests)
AUDIOSET_CLASSES = 527
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ReleasedTeacher:
    name: str
    file: str
    published_map: float | None  # mAP on AudioSet eval as published; None where not stated
    width: float = 1.0  # mn / dymn only
    head: str = "mlp"
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    n_mels: int = 128
    hop_length: int = 320  # samples at 32 kHz (10 ms)
    sha256: str | None = None
    note: str = ""
    num_classes: int = AUDIOSET_CLASSES
    family: str = "mn"  # "mn" (teacher.model), "dymn" (teacher.dymn) or "passt" (teacher.passt)
    dynamic_blocks: str = "all"  # dymn only: "all" or "replace_se"
    temperature: float = 1.0  # dymn only: the kernel-attention temperature its training ended with
    published_params_m: float | None = None  # parameters (millions) as EfficientAT's README states them
    published_macs_g: float | None = None  # multiply-accumulates per 10-s clip (billions), likewise
    release_url: str = RELEASE_URL  # the folder URL the file lies in
    depth: int = 12  # passt only: transformer blocks
    patch_stride: int = 10  # passt only: patch stride, the same along frequency and time
    input_frames: int = 998  # passt only: frames its time position embedding covers

    @property
    def url(self) -> str:
        base = os.environ.get(MIRROR_ENV) or self.release_url
        return urllib.parse.urljoin(base if base.endswith("/") else base + "/", urllib.parse.quote(self.file))

    def frontend_config(self) -> FrontEndConfig:
        return FrontEndConfig(n_mels=self.n_mels, hop_length=self.hop_length)

    def model_config(self, num_classes: int | None = None) -> MNConfig | DyMNConfig | PaSSTConfig:
        classes = num_classes or self.num_classes
        if self.family == "passt":
            return PaSSTConfig(num_classes=classes, depth=self.depth, stride=(self.patch_stride,) * 2,
                               n_mels=self.n_mels, input_frames=self.input_frames)
        if self.family == "dymn":
            return DyMNConfig(width=self.width, num_classes=classes, strides=self.strides, head=self.head,
                              dynamic_blocks=self.dynamic_blocks, temperature=self.temperature)
        return MNConfig(width=self.width, num_classes=classes, strides=self.strides,
                        head=self.head, input_dims=(self.n_mels, 1000))

    def build_model(self, num_classes: int | None = None) -> nn.Module:
        """The network of this entry (random weights), the one place that maps family → class."""
        cfg = self.model_config(num_classes)
        if isinstance(cfg, PaSSTConfig):
            return PaSST(cfg)
        return DynamicMobileNet(cfg) if isinstance(cfg, DyMNConfig) else MobileNetAudio(cfg)

    def architecture(self, num_classes: int) -> dict:
        """The shape facts recorded in a teacher's provenance (mn entries keep their original keys,
        so stores written before DyMN existed keep their identity)."""
        if self.family == "passt":
            cfg = self.model_config(num_classes)
            return {"family": "passt", "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
                    "patch_size": cfg.patch_size, "stride": list(cfg.stride), "input_frames": cfg.input_frames,
                    "num_classes": num_classes}
        arch = {"width": self.width, "head": self.head, "strides": list(self.strides), "num_classes": num_classes}
        if self.family == "dymn":
            arch.update(family="dymn", dynamic_blocks=self.dynamic_blocks, temperature=self.temperature)
        return arch


def _mn(name: str, file: str, width: float, mAP: float | None, **kw) -> ReleasedTeacher:
    return ReleasedTeacher(name=name, file=file, width=width, published_map=mAP, **kw)


_RELEASED: tuple[ReleasedTeacher, ...] = (
    _mn("mn01_as", "mn01_as_mAP_298.pt", 0.1, None, note="file name says mAP 0.298"),
    _mn("mn02_as", "mn02_as_mAP_378.pt", 0.2, None, note="file name says mAP 0.378"),
    _mn("mn04_as", "mn04_as_mAP_432.pt", 0.4, 0.432),
    _mn("mn05_as", "mn05_as_mAP_443.pt", 0.5, 0.443),
    _mn("mn10_as", "mn10_as_mAP_471.pt", 1.0, 0.471),
    _mn("mn20_as", "mn20_as_mAP_478.pt", 2.0, 0.478),
    _mn("mn30_as", "mn30_as_mAP_482.pt", 3.0, 0.482),
    _mn("mn40_as", "mn40_as_mAP_484.pt", 4.0, 0.484),
    _mn("mn40_as(2)", "mn40_as_mAP_483.pt", 4.0, None, note="second mn40_as run; file name says 0.483"),
    _mn("mn40_as(3)", "mn40_as_mAP_483(2).pt", 4.0, None, note="third mn40_as run; file name says 0.483"),
    _mn("mn40_as_ext", "mn40_as_ext_mAP_487.pt", 4.0, 0.487, note="300 epochs"),
    _mn("mn40_as_ext(2)", "mn40_as_ext_mAP_486.pt", 4.0, None, note="file name says 0.486"),
    _mn("mn40_as_ext(3)", "mn40_as_ext_mAP_485.pt", 4.0, None, note="file name says 0.485"),
    _mn("mn40_as_no_im_pre", "mn40_as_no_im_pre_mAP_483.pt", 4.0, 0.483, note="no ImageNet pre-training"),
    _mn("mn40_as_no_im_pre(2)", "mn40_as_no_im_pre_mAP_483(2).pt", 4.0, None, note="file name says 0.483"),
    _mn("mn40_as_no_im_pre(3)", "mn40_as_no_im_pre_mAP_482.pt", 4.0, None, note="file name says 0.482"),
    _mn("mn10_as_hop_5", "mn10_as_hop_5_mAP_475.pt", 1.0, None, hop_length=160, note="5 ms hop; file name says 0.475"),
    _mn("mn10_as_hop_15", "mn10_as_hop_15_mAP_463.pt", 1.0, 0.463, hop_length=480),
    _mn("mn10_as_hop_20", "mn10_as_hop_20_mAP_456.pt", 1.0, 0.456, hop_length=640),
    _mn("mn10_as_hop_25", "mn10_as_hop_25_mAP_447.pt", 1.0, 0.447, hop_length=800),
    _mn("mn10_as_mels_40", "mn10_as_mels_40_mAP_453.pt", 1.0, 0.453, n_mels=40),
    _mn("mn10_as_mels_64", "mn10_as_mels_64_mAP_461.pt", 1.0, 0.461, n_mels=64),
    _mn("mn10_as_mels_256", "mn10_as_mels_256_mAP_474.pt", 1.0, 0.474, n_mels=256),
    _mn("mn10_as_fc", "mn10_as_fc_mAP_465.pt", 1.0, None, head="fully_convolutional", note="file name says 0.465"),
    _mn("mn10_as_fc_s2221", "mn10_as_fc_s2221_mAP_466.pt", 1.0, None, head="fully_convolutional",
        strides=(2, 2, 2, 1), note="file name says 0.466"),
    _mn("mn10_as_fc_s2211", "mn10_as_fc_s2211_mAP_466.pt", 1.0, None, head="fully_convolutional",
        strides=(2, 2, 1, 1), note="file name says 0.466"),
)

# EfficientAT's README: parameters (M) and MACs (G) per width; the same for every run of a width.
_DYMN_SIZE = {0.4: (1.97, 0.12), 1.0: (10.57, 0.58), 2.0: (40.02, 2.2)}


def _dymn(name: str, file: str, width: float, mAP: float | None, dynamic_blocks: str = "all",
          imagenet: bool = False, **kw) -> ReleasedTeacher:
    params, macs = _DYMN_SIZE[width] if dynamic_blocks == "all" and not imagenet else (None, None)
    return ReleasedTeacher(
        name=name, file=file, width=width, published_map=mAP, family="dymn", dynamic_blocks=dynamic_blocks,
        # ImageNet pre-training keeps the temperature at its start value 30 (upstream's pretrain_final_temp
        # for *_im start points); the AudioSet runs anneal it to 1.
        temperature=30.0 if imagenet else 1.0, num_classes=IMAGENET_CLASSES if imagenet else AUDIOSET_CLASSES,
        published_params_m=params, published_macs_g=macs, **kw)


_IMAGENET_NOTE = "ImageNet start point (1000-class head), not an AudioSet tagger"
_RELEASED_DYMN: tuple[ReleasedTeacher, ...] = (
    _dymn("dymn04_as", "dymn04_as.pt", 0.4, 0.450),
    _dymn("dymn10_as", "dymn10_as.pt", 1.0, 0.477),
    # upstream pointed this name at dymn20_as.pt until 2024-02-07, when the README's 49.1 was measured
    _dymn("dymn20_as", "dymn20_as_mAP_493.pt", 2.0, None, note="file name says 0.493 (upstream's default "
          "since 2024-02-07); the README's 49.1 is dymn20_as(1)'s"),
    _dymn("dymn20_as(1)", "dymn20_as.pt", 2.0, 0.491, note="dymn20_as before 2024-02-07, the README's 49.1"),
    _dymn("dymn20_as(2)", "dymn20_as_mAP_489.pt", 2.0, None, note="file name says 0.489"),
    _dymn("dymn20_as(3)", "dymn20_as_mAP_490.pt", 2.0, None, note="file name says 0.490"),
    _dymn("dymn04_replace_se_as", "dymn04_replace_se_as.pt", 0.4, None, dynamic_blocks="replace_se",
          note="dynamic blocks only where MobileNetV3 has squeeze-excitation; no mAP published"),
    _dymn("dymn10_replace_se_as", "dymn10_replace_se_as.pt", 1.0, None, dynamic_blocks="replace_se",
          note="dynamic blocks only where MobileNetV3 has squeeze-excitation; no mAP published; upstream's "
          "URL table spells the file with a leading space"),
    _dymn("dymn04_im", "dymn04_im.pt", 0.4, None, imagenet=True, note=_IMAGENET_NOTE),
    _dymn("dymn10_im", "dymn10_im.pt", 1.0, None, imagenet=True, note=_IMAGENET_NOTE),
    _dymn("dymn20_im", "dymn20_im.pt", 2.0, None, imagenet=True, note=_IMAGENET_NOTE),
)



def _passt(name: str, release: str, file: str, mAP: float, stride: int = 10, **kw) -> ReleasedTeacher:
    return ReleasedTeacher(name=name, file=file, published_map=mAP, family="passt", patch_stride=stride,
                           release_url=PASST_RELEASES + release + "/", **kw)


_SWA = "weights averaged over epochs (SWA)"
# Names are upstream's get_model arch names (default_cfgs names for the two STFT-hop models);
# input_frames is the time size the position embedding was made for (default_cfgs' input_size,
# upstream's input_tdim); 10-s clips give 1000 frames at hop 320.
_RELEASED_PASST: tuple[ReleasedTeacher, ...] = (
    _passt("passt_s_kd_p16_128_ap486", "v.0.0.9", "passt-s-kd-ap.486.pt", 0.486,
           note="PaSST-S trained with knowledge distillation; the best single released PaSST"),
    _passt("passt_s_swa_p16_128_ap476", "v0.0.1-audioset", "passt-s-f128-p16-s10-ap.476-swa.pt", 0.476,
           note=f"upstream's default; {_SWA}"),
    _passt("passt_s_swa_p16_128_ap4761", "v0.0.2-audioset", "passt-s-f128-p16-s10-ap.4761-swa.pt", 0.4761,
           note=f"second run; {_SWA}"),
    _passt("passt_s_p16_128_ap472", "v0.0.2-audioset", "passt-s-f128-p16-s10-ap.472.pt", 0.472),
    _passt("passt_s_swa_p16_s12_128_ap473", "v0.0.2-audioset", "passt-s-f128-p16-s12-ap.473-swa.pt", 0.473,
           stride=12, note=_SWA),
    _passt("passt_s_p16_s12_128_ap470", "v0.0.2-audioset", "passt-s-f128-p16-s12-ap.470.pt", 0.470, stride=12),
    _passt("passt_s_swa_p16_s14_128_ap471", "v0.0.2-audioset", "passt-s-f128-p16-s14-ap.471-swa.pt", 0.471,
           stride=14, note=_SWA),
    _passt("passt_s_p16_s14_128_ap469", "v0.0.2-audioset", "passt-s-f128-p16-s14-ap.469.pt", 0.469, stride=14),
    _passt("passt_s_swa_p16_s16_128_ap473", "v0.0.2-audioset", "passt-s-f128-p16-s16-ap.473-swa.pt", 0.473,
           stride=16, note=f"patches do not overlap; {_SWA}"),
    _passt("passt_s_p16_s16_128_ap468", "v0.0.2-audioset", "passt-s-f128-p16-s16-ap.468.pt", 0.468, stride=16,
           note="patches do not overlap"),
    _passt("passt_s_f128_20sec_p16_s10_ap474", "v0.0.5", "passt-s-f128-20sec-p16-s10-ap.474-swa.pt", 0.474,
           input_frames=2000, note=f"time positions for up to 20 s (--clip-seconds 20); {_SWA}"),
    _passt("passt_s_f128_30sec_p16_s10_ap473", "v0.0.5", "passt-s-f128-30sec-p16-s10-ap.473-swa.pt", 0.473,
           input_frames=3000, note=f"time positions for up to 30 s (--clip-seconds 30); {_SWA}"),
    _passt("passt_s_swa_f128_stfthop100_p16_s10_ap473", "v0.0.3-audioset",
           "passt-s-f128-stfthop100-p16-s10-ap.473-swa.pt", 0.473, hop_length=100, input_frames=3200,
           note=f"STFT hop 100 samples (3.125 ms); {_SWA}"),
    _passt("passt_s_swa_f128_stfthop160_p16_s10_ap473", "v0.0.3-audioset",
           "passt-s-f128-stfthop160-p16-s10-ap.473-swa.pt", 0.473, hop_length=160, input_frames=2000,
           note=f"STFT hop 160 samples (5 ms); {_SWA}"),
    _passt("passt_l_kd_p16_128_ap47", "v.0.0.10", "passt-l-kd-ap.47.pt", 0.4708, depth=7,
           note="PaSST-L: 'light', 7 blocks, trained with knowledge distillation; the name says 0.47, "
           "upstream's loader message 0.4708"),
)

RELEASED: dict[str, ReleasedTeacher] = {spec.name: spec for spec in _RELEASED + _RELEASED_DYMN + _RELEASED_PASST}


@dataclass(frozen=True)
class EnsemblePreset:
    name: str
    members: tuple[str, ...]
    published_map: float | None
    note: str = field(default="")


ENSEMBLES: dict[str, EnsemblePreset] = {
    "mn_ensemble": EnsemblePreset(
        "mn_ensemble",
        ("mn40_as", "mn40_as(2)", "mn40_as(3)", "mn40_as_ext", "mn40_as_ext(2)", "mn40_as_ext(3)",
         "mn40_as_no_im_pre", "mn40_as_no_im_pre(2)", "mn40_as_no_im_pre(3)"),
        0.498, "EfficientAT's 9-model logit average",
    ),
    # PaSST's own ensembles (its config_updates.py), logit averages of the 10-s models
    "passt_ensemble_many": EnsemblePreset(
        "passt_ensemble_many",
        ("passt_s_swa_p16_128_ap476", "passt_s_swa_p16_128_ap4761", "passt_s_p16_128_ap472",
         "passt_s_p16_s12_128_ap470", "passt_s_swa_p16_s12_128_ap473", "passt_s_p16_s14_128_ap469",
         "passt_s_swa_p16_s14_128_ap471", "passt_s_swa_p16_s16_128_ap473", "passt_s_p16_s16_128_ap468"),
        0.4956, "PaSST's 9-model ensemble (strides 10-16), the source of EfficientAT's distillation targets",
    ),
    "passt_ensemble_5": EnsemblePreset(
        "passt_ensemble_5",
        ("passt_s_swa_p16_128_ap476", "passt_s_swa_p16_128_ap4761", "passt_s_swa_p16_s12_128_ap473",
         "passt_s_swa_p16_s14_128_ap471", "passt_s_swa_p16_s16_128_ap473"),
        0.49459, "PaSST's 5 SWA models",
    ),
    "passt_ensemble_4": EnsemblePreset(
        "passt_ensemble_4",
        ("passt_s_swa_p16_128_ap476", "passt_s_swa_p16_s12_128_ap473", "passt_s_swa_p16_s14_128_ap471",
         "passt_s_swa_p16_s16_128_ap473"),
        0.4926, "one SWA model per stride",
    ),
    "passt_ensemble_s16_14": EnsemblePreset(
        "passt_ensemble_s16_14", ("passt_s_swa_p16_s14_128_ap471", "passt_s_swa_p16_s16_128_ap473"),
        0.48579, "strides 14 and 16",
    ),
}


def released(name: str) -> ReleasedTeacher:
    """The registry entry of a released teacher; an unknown name lists the known ones."""
    try:
        return RELEASED[name]
    except KeyError:
        raise TeacherError(f"unknown teacher {name!r}; known: {', '.join(RELEASED)}, or ensembles "
                           f"{', '.join(ENSEMBLES)}") from None


def expand_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """Teacher names with ensemble presets replaced by their members (order kept)."""
    out: list[str] = []
    for name in names:
        out.extend(ENSEMBLES[name].members if name in ENSEMBLES else [released(name).name])
    return out

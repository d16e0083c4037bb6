"""The teacher: EfficientAT's MobileNetV3 "mn" CNNs and dynamic "dymn" CNNs, PaSST transformers,
their mel front-end and the registry of released checkpoints. Pure torch; never imports `pipeline`.

    from teacher import load_teacher
    teacher = load_teacher("mn10_as")         # fetched into $FAT_CACHE/teachers on first use
                                              # (or "dymn20_as", "passt_s_kd_p16_128_ap486")
    logits = teacher(waveform_32k)            # (B, samples) → (B, 527) raw logits
"""

from teacher.dymn import DyMNConfig, DynamicMobileNet, create_dymn
from teacher.errors import CheckpointUnavailable, TeacherError
from teacher.frontend import FrontEndConfig, MelFrontEnd, mel_filterbank
from teacher.model import MNConfig, MobileNetAudio, create_mn
from teacher.passt import PaSST, PaSSTConfig, create_passt
from teacher.registry import ENSEMBLES, RELEASED, ReleasedTeacher, expand_names, released
from teacher.teacher import RANDOM_INIT_WARNING, Provenance, Teacher, load_teacher

__all__ = [
    "CheckpointUnavailable", "TeacherError", "FrontEndConfig", "MelFrontEnd", "mel_filterbank", "MNConfig",
    "MobileNetAudio", "create_mn", "DyMNConfig", "DynamicMobileNet", "create_dymn", "PaSST", "PaSSTConfig", "create_passt",
    "ENSEMBLES", "RELEASED", "ReleasedTeacher", "expand_names", "released",
    "RANDOM_INIT_WARNING", "Provenance", "Teacher", "load_teacher",
]

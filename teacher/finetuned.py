"""A teacher fine-tuned on another dataset: a released network's body with a new head, and its file.

Starting point (`start_network`): the registry entry's network built for the new class count,
with every released weight that fits copied in. The tensors that depend on the class count (the
head: mn/DyMN `classifier.5`, or `classifier.0/1` of the fully convolutional head; PaSST's
`head.1` and `head_dist`) keep their fresh initialisation — an AudioSet head cannot speak for
other classes. Which tensors those are is found by shape, not listed per family, so a family
added to the registry needs nothing here.

The file (`finetuned_payload` / `load_finetuned`): a torch pickle of plain types, read with
`weights_only=True`: `{"format": "fat-teacher/1", "name", "base" (the registry entry),
"architecture", "frontend", "num_classes", "mids", "names", "label_csv_sha256", "multi_label",
"state_dict", "extra"}`. `load_finetuned` rebuilds the network from the registry entry and checks
it against the recorded architecture, so `fat logits --teacher FILE` and `fat predict` run it
like a released teacher, and a label CSV other than the one it learned is refused by its sha256.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from teacher.errors import TeacherError
from teacher.frontend import FrontEndConfig, MelFrontEnd
from teacher.hub import sha256_file
from teacher.registry import ReleasedTeacher, released
from teacher.teacher import Provenance, Teacher, load_weights

FORMAT = "fat-teacher/1"
FILE_SUFFIX = ".pt"


class FinetunedTeacher(Teacher):
    """A Teacher that knows which classes (and which label CSV) its head was trained on."""

    def __init__(self, frontend: MelFrontEnd, model: nn.Module, provenance: Provenance, mids: tuple[str, ...],
                 names: tuple[str, ...], label_csv_sha256: str, multi_label: bool) -> None:
        super().__init__(frontend, model, provenance)
        self.mids, self.names = mids, names
        self.label_csv_sha256 = label_csv_sha256
        self.multi_label = multi_label


def is_teacher_file(name: str | Path) -> bool:
    """A --teacher value that names a fine-tuned teacher file rather than a registry entry
    (registry names hold neither a path separator nor the file suffix)."""
    text = str(name)
    return text.endswith(FILE_SUFFIX) or "/" in text or Path(text).is_file()


def class_dependent_keys(spec: ReleasedTeacher, num_classes: int) -> set[str]:
    """The state-dict keys whose shape depends on the class count: the head, whatever the family."""
    first = {k: v.shape for k, v in spec.build_model(num_classes).state_dict().items()}
    other = {k: v.shape for k, v in spec.build_model(num_classes + 1).state_dict().items()}
    return {key for key, shape in first.items() if other.get(key) != shape}


def start_network(spec: ReleasedTeacher, num_classes: int, state: dict[str, Tensor] | None, source: str) -> nn.Module:
    """The network for `num_classes` classes: the released body from `state` (None: random init) and a fresh head.

    Every body tensor must be in the file with its shape (the message lists what does not fit, as
    for a released teacher); the file's head is left out whatever its size.
    """
    model = spec.build_model(num_classes)
    if state is None:
        return model
    head = class_dependent_keys(spec, num_classes)
    own = model.state_dict()
    body = {key: value for key, value in state.items() if key not in head}
    for key in own:  # old files may lack BatchNorm's batch counters, which do not affect outputs
        if key.endswith("num_batches_tracked") and key not in body and key not in head:
            body[key] = own[key]
    missing = [k for k in own if k not in head and k not in body]
    unexpected = [k for k in body if k not in own]
    mismatched = [f"{k} {tuple(body[k].shape)} vs {tuple(own[k].shape)}" for k in body
                  if k in own and body[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("mis-shaped (file vs model)", mismatched)) if keys]
        raise TeacherError(f"{source}: checkpoint does not fit {spec.name}'s network ({'; '.join(parts)})")
    model.load_state_dict({**own, **body}, strict=True)
    return model


def finetuned_payload(teacher_model: nn.Module, base: str, frontend: FrontEndConfig, mids: list[str],
                      names: list[str], label_csv_sha256: str, multi_label: bool, name: str,
                      extra: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned teacher file holds (plain types and tensors only)."""
    spec = released(base)
    eval_frontend = dataclasses.replace(frontend, freqm=0, timem=0)  # the masks are training-only
    return {
        "format": FORMAT, "name": name, "base": base, "architecture": spec.architecture(len(mids)),
        "frontend": dataclasses.asdict(eval_frontend), "num_classes": len(mids), "mids": list(mids),
        "names": list(names), "label_csv_sha256": label_csv_sha256, "multi_label": bool(multi_label),
        "state_dict": {k: v.detach().cpu().clone() for k, v in teacher_model.state_dict().items()},
        "extra": extra,
    }


def read_finetuned(path: str | Path) -> dict[str, Any]:
    """The raw payload of a fine-tuned teacher file; a foreign or damaged file is a TeacherError naming it."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"{path}: no such teacher file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherError(f"{path}: not a readable teacher file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TeacherError(f"{path}: not a fine-tuned teacher file (no format {FORMAT!r}; `fat finetune-teacher` "
                           "writes them); a released checkpoint goes with --teacher NAME --checkpoint FILE")
    return payload


def load_finetuned(path: str | Path) -> FinetunedTeacher:
    """The fine-tuned teacher in eval mode, rebuilt from its registry entry and checked against its file."""
    path = Path(path)
    payload = read_finetuned(path)
    spec = released(payload["base"])
    classes = int(payload["num_classes"])
    if spec.architecture(classes) != payload["architecture"]:
        raise TeacherError(f"{path}: made from {payload['base']} as {payload['architecture']}, but that registry "
                           f"entry now builds {spec.architecture(classes)}")
    known = {f.name for f in dataclasses.fields(FrontEndConfig)}
    frontend = MelFrontEnd(FrontEndConfig(**{k: v for k, v in payload["frontend"].items() if k in known}))
    model = spec.build_model(classes)
    load_weights(model, dict(payload["state_dict"]), str(path))
    provenance = Provenance(
        name=str(payload["name"]), checkpoint_file=str(path), checkpoint_sha256=sha256_file(path), random_init=False,
        frontend=frontend.cfg.to_dict(), published_map=None,
        architecture={**payload["architecture"], "finetuned_from": payload["base"]},
    )
    return FinetunedTeacher(frontend, model, provenance, tuple(payload["mids"]), tuple(payload["names"]),
                            str(payload["label_csv_sha256"]), bool(payload["multi_label"])).eval()

"""The training dataset: AST's features, waveform mixup with mixed targets, teacher lookup and its policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.audio import read_audio
from pipeline.core.errors import FatError
from pipeline.datafile import load_clips
from pipeline.dataset import (
    Augment,
    ClipDataset,
    Features,
    load_teacher_table,
    mix_waves,
)
from student.features import kaldi_fbank, normalize
from tests.train_fixtures import make_task, oracle_logits, write_label_csv, write_store

FEATURES = Features(target_frames=128, num_mel_bins=128, mean=-4.2677393, std=4.5689974)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("dataset"), n_train=10, n_valid=4, num_classes=4, seed=1)


@pytest.fixture(scope="module")
def label_set(task):
    from pipeline.datafile import load_label_csv

    return load_label_csv(task.labels)


@pytest.fixture(scope="module")
def clips(task, label_set):
    return load_clips([task.train], label_set, require_files=True)


@pytest.fixture(scope="module")
def teacher(task, clips, label_set, tmp_path_factory):
    store = write_store(tmp_path_factory.mktemp("store") / "teacher.h5", task.train_ids,
                        oracle_logits(task.train_targets), task.labels)
    return load_teacher_table(store, clips, label_set)


def reference_fbank(path: str) -> torch.Tensor:
    audio, _ = read_audio(path, 16000)
    wave = torch.from_numpy(audio)
    return normalize(kaldi_fbank(wave - wave.mean(), FEATURES.target_frames), FEATURES.mean, FEATURES.std)


def test_evaluation_items_are_ast_features_with_multi_hot_targets(clips, teacher, task):
    dataset = ClipDataset(clips, FEATURES, Augment(mixup=1.0, freqm=40, timem=40, noise=True), teacher)
    item = dataset[3]  # a plain index: evaluation, no augmentation whatever the settings
    assert item["fbank"].shape == (128, 128) and item["fbank"].dtype == torch.float32
    torch.testing.assert_close(item["fbank"], reference_fbank(clips.paths[3]))
    # 1 s clips give 98 frames; AST pads with zeros in the log domain before normalising.
    padded = (0.0 - FEATURES.mean) / (2 * FEATURES.std)
    torch.testing.assert_close(item["fbank"][98:], torch.full((30, 128), padded))
    np.testing.assert_array_equal(item["target"].numpy(), task.train_targets[3])
    np.testing.assert_allclose(item["teacher"].numpy(), oracle_logits(task.train_targets)[3], rtol=1e-3)
    assert item["lam"].item() == 1.0 and bool(item["teacher_mask"]) and int(item["index"]) == 3


def test_waveform_mixup_mixes_targets_and_teacher_partner_with_the_same_lambda(clips, teacher, task):
    dataset = ClipDataset(clips, FEATURES, Augment(mixup=1.0), teacher)
    item = dataset[(2, 12345)]
    lam = item["lam"].item()
    assert 0.0 < lam < 1.0
    teacher_rows = oracle_logits(task.train_targets)
    partners = [p for p in range(len(clips))
                if np.allclose(item["partner_teacher"].numpy(), teacher_rows[p], rtol=1e-3)
                and np.allclose(item["target"].numpy(), lam * task.train_targets[2] + (1 - lam) * task.train_targets[p])]
    assert partners, "target and partner teacher must come from one partner mixed with lam"
    # The audio itself was mixed (AST: on the waveform, then fbank), with that partner and lam.
    waves = [torch.from_numpy(read_audio(clips.paths[i], 16000)[0]) for i in (2, partners[0])]
    mixed = mix_waves(waves[0] - waves[0].mean(), waves[1] - waves[1].mean(), lam)
    expected = normalize(kaldi_fbank(mixed, FEATURES.target_frames), FEATURES.mean, FEATURES.std)
    torch.testing.assert_close(item["fbank"], expected, rtol=1e-4, atol=1e-4)
    # Same seed → same item; another seed → another draw.
    torch.testing.assert_close(dataset[(2, 12345)]["fbank"], item["fbank"])
    assert not torch.equal(dataset[(2, 999)]["fbank"], item["fbank"])


def test_spec_augment_noise_and_shift_change_only_training_items(clips):
    plain = ClipDataset(clips, FEATURES)[(1, 7)]["fbank"]
    masked_value = (0.0 - FEATURES.mean) / (2 * FEATURES.std)
    masked = ClipDataset(clips, FEATURES, Augment(freqm=60, timem=60))
    found_band = False
    for seed in range(6):
        fbank = masked[(1, seed)]["fbank"]
        # A masked mel bin holds the normalised zero in every frame.
        full_band = torch.isclose(fbank[:98], torch.tensor(masked_value), atol=1e-6).all(dim=0)
        found_band |= bool(full_band.any())
    assert found_band
    noisy = ClipDataset(clips, FEATURES, Augment(noise=True))[(1, 7)]["fbank"]
    difference = noisy - plain
    assert (difference >= 0).all() and (difference < 0.1).all() and difference.max() > 0
    shifted = ClipDataset(clips, FEATURES, Augment(time_shift=10))[(1, 7)]["fbank"]
    assert any(torch.equal(shifted, torch.roll(plain, k, dims=0)) for k in range(-10, 10))


def test_missing_teacher_rows_error_by_default_or_are_masked(task, clips, label_set, tmp_path):
    store = write_store(tmp_path / "partial.h5", task.train_ids[2:], oracle_logits(task.train_targets[2:]), task.labels)
    with pytest.raises(FatError, match=r"2 of 10 clips .* no teacher logits: train000, train001.*--missing-teacher mask"):
        load_teacher_table(store, clips, label_set, missing="error")
    table = load_teacher_table(store, clips, label_set, missing="mask")
    assert table.present.tolist() == [False, False] + [True] * 8
    item = ClipDataset(clips, FEATURES, teacher=table)[0]
    assert not bool(item["teacher_mask"])
    np.testing.assert_allclose(table.logits[5].float().numpy(), oracle_logits(task.train_targets)[5], rtol=1e-3)


def test_stores_that_do_not_fit_the_labels_are_refused(task, clips, label_set, tmp_path):
    other_csv = tmp_path / "other.csv"
    write_label_csv(other_csv, 4)
    other_csv.write_text(other_csv.read_text().replace("low tone", "a different name"))
    wrong_sha = write_store(tmp_path / "sha.h5", task.train_ids, oracle_logits(task.train_targets), other_csv)
    with pytest.raises(FatError, match="another label CSV"):
        load_teacher_table(wrong_sha, clips, label_set)
    five = np.zeros((len(task.train_ids), 5), np.float32)
    wrong_width = write_store(tmp_path / "width.h5", task.train_ids, five, task.labels)
    with pytest.raises(FatError, match="5 classes but the label CSV has 4"):
        load_teacher_table(wrong_width, clips, label_set)
    incomplete = write_store(tmp_path / "incomplete.h5", task.train_ids, oracle_logits(task.train_targets),
                             task.labels, complete=False)
    with pytest.raises(FatError, match="incomplete"):
        load_teacher_table(incomplete, clips, label_set, missing="error")
    assert load_teacher_table(incomplete, clips, label_set, missing="mask").present.all()


def test_workers_give_the_same_items_as_the_main_process(clips, teacher):
    from torch.utils.data import DataLoader

    from pipeline.sampling import EpochSampler

    dataset = ClipDataset(clips, FEATURES, Augment(mixup=0.5, freqm=20, timem=20), teacher)
    sampler = EpochSampler(len(clips), seed=4)
    batches = [DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers) for workers in (0, 2)]
    for a, b in zip(*batches):
        torch.testing.assert_close(a["fbank"], b["fbank"])
        torch.testing.assert_close(a["target"], b["target"])

"""The training dataset: waveform items, the one batch feature path (AST's features, in-batch waveform
mixup with mixed targets and KD target, SpecAugment/noise/roll), teacher lookup and its policies."""

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
    DeviceInputs,
    batch_generator,
    collate_clips,
    load_teacher_table,
)
from student.features import normalize, wave_to_fbank
from tests.train_fixtures import make_task, oracle_logits, write_label_csv, write_store

RATE = 32000  # the fixtures' files: mixed at their own rate, resampled on the batch
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


def reference_fbank(wave: torch.Tensor, rate: int) -> torch.Tensor:
    """The per-clip path: resampled to 16 kHz, centred, torchaudio's kaldi fbank, normalised."""
    return normalize(wave_to_fbank(wave, rate, FEATURES.target_frames), FEATURES.mean, FEATURES.std)


def reference_mix(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """AST's per-item waveform mixup: both centred, the partner fitted to the first's length, re-centred."""
    first, second = first - first.mean(), second - second.mean()
    second = torch.nn.functional.pad(second, (0, max(0, first.shape[0] - second.shape[0])))[: first.shape[0]]
    mixed = lam * first + (1.0 - lam) * second
    return mixed - mixed.mean()


def close_to_reference(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Within 1e-4 everywhere, also in the pure tones' mel bins near the log floor (power ~1e-7),
    where a different summation order would move a cell by ~4e-4: the batch path reduces each
    clip as the per-clip path does."""
    difference = (ours - reference).abs()
    assert difference.max() <= 1e-4, difference.max()


def wave_of(path: str) -> torch.Tensor:
    """The file's samples at its own rate (the fixtures' files are 32 kHz)."""
    audio, rate = read_audio(path)
    assert rate == RATE
    return torch.from_numpy(audio)


def test_items_are_waveforms_and_evaluation_features_are_asts(clips, teacher, task):
    dataset = ClipDataset(clips, FEATURES, Augment(mixup=1.0, freqm=40, timem=40, noise=True), teacher)
    item = dataset[(3, 5)]  # items carry no features and no randomness, whatever the settings
    assert set(item) == {"wave", "length", "rate", "target", "teacher", "teacher_mask", "index"}
    torch.testing.assert_close(item["wave"], wave_of(clips.paths[3]))
    assert int(item["length"]) == item["wave"].shape[0] and int(item["rate"]) == RATE
    np.testing.assert_array_equal(item["target"].numpy(), task.train_targets[3])
    np.testing.assert_allclose(item["teacher"].numpy(), oracle_logits(task.train_targets)[3], rtol=1e-3)
    assert bool(item["teacher_mask"]) and int(item["index"]) == 3
    # A batch of clips cut to different lengths: each clip's features are its own per-clip features.
    cuts = (32000, 18000, 24689)
    items = [{**dataset[i], "wave": dataset[i]["wave"][:n], "length": torch.tensor(n)}
             for i, n in zip((3, 4, 5), cuts)]
    batch = collate_clips(items)
    assert batch["wave"].shape == (3, 32000) and batch["length"].tolist() == list(cuts)
    features = DeviceInputs(FEATURES).evaluation(batch)
    assert features.shape == (3, 128, 128) and features.dtype == torch.float32
    for row, (i, n) in enumerate(zip((3, 4, 5), cuts)):
        close_to_reference(features[row], reference_fbank(wave_of(clips.paths[i])[:n], RATE))
    # 1 s clips give 98 frames; AST pads with zeros in the log domain before normalising.
    padded = (0.0 - FEATURES.mean) / (2 * FEATURES.std)
    torch.testing.assert_close(features[0, 98:], torch.full((30, 128), padded))


def test_in_batch_mixup_mixes_audio_targets_and_teacher_with_one_partner_and_lambda(clips, teacher, task):
    dataset = ClipDataset(clips, FEATURES, teacher=teacher)
    batch = collate_clips([dataset[i] for i in range(6)])
    inputs = DeviceInputs(FEATURES)
    out = inputs.training(batch, Augment(mixup=1.0), batch_generator(3, 1, 0, 0))
    partner, lam = out.plan.partner, out.plan.lam
    mixed_rows = torch.nonzero(lam < 1).flatten().tolist()
    assert mixed_rows and all(0.0 < float(lam[i]) < 1.0 for i in mixed_rows)
    targets = torch.from_numpy(task.train_targets[:6]).float()
    teacher_rows = torch.from_numpy(oracle_logits(task.train_targets)[:6]).float()
    mix = out.teacher_mix(batch["teacher"], batch["teacher_mask"])
    for row in range(6):
        other, weight = int(partner[row]), float(lam[row])
        torch.testing.assert_close(out.target[row], weight * targets[row] + (1 - weight) * targets[other])
        torch.testing.assert_close(mix.partner_logits[row], teacher_rows[other], rtol=1e-3, atol=1e-3)
        assert float(mix.lam[row]) == weight
        # The audio itself was mixed (AST: on the waveform, then fbank), with that partner and λ.
        expected = reference_fbank(reference_mix(wave_of(clips.paths[row]), wave_of(clips.paths[other]), weight), RATE)
        close_to_reference(out.features[row], expected)
    # Same (seed, epoch, batch, rank) → the same batch; another batch index → another draw.
    again = inputs.training(batch, Augment(mixup=1.0), batch_generator(3, 1, 0, 0))
    assert torch.equal(again.features, out.features) and torch.equal(again.plan.lam, lam)
    other = inputs.training(batch, Augment(mixup=1.0), batch_generator(3, 1, 1, 0))
    assert not torch.equal(other.plan.lam, lam)
    plain = inputs.training(batch, Augment(), batch_generator(3, 1, 0, 0))
    assert torch.equal(plain.plan.lam, torch.ones(6)) and torch.equal(plain.target, batch["target"])
    torch.testing.assert_close(plain.features, inputs.evaluation(batch))


def test_spec_augment_noise_and_shift_change_only_training_batches(clips):
    batch = collate_clips([ClipDataset(clips, FEATURES)[i] for i in range(4)])
    inputs = DeviceInputs(FEATURES)
    plain = inputs.evaluation(batch)
    masked_value = (0.0 - FEATURES.mean) / (2 * FEATURES.std)
    found_band = False
    for seed in range(3):
        fbank = inputs.training(batch, Augment(freqm=60, timem=60), batch_generator(seed)).features
        # A masked mel bin holds the normalised zero in every frame.
        full_band = torch.isclose(fbank[:, :98], torch.tensor(masked_value), atol=1e-6).all(dim=1)
        found_band |= bool(full_band.any())
        assert ((fbank == plain) | torch.isclose(fbank, torch.tensor(masked_value), atol=1e-6)).all()
    assert found_band
    noisy = inputs.training(batch, Augment(noise=True), batch_generator(7)).features
    difference = noisy - plain
    assert (difference >= 0).all() and (difference < 0.1).all() and difference.max() > 0
    shifted = inputs.training(batch, Augment(time_shift=10), batch_generator(7)).features
    for row in range(4):
        assert any(torch.equal(shifted[row], torch.roll(plain[row], k, dims=0)) for k in range(-10, 10))


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


def test_workers_give_the_same_batches_as_the_main_process(clips, teacher):
    from torch.utils.data import DataLoader

    from pipeline.sampling import EpochSampler

    dataset = ClipDataset(clips, FEATURES, Augment(mixup=0.5, freqm=20, timem=20), teacher)
    sampler = EpochSampler(len(clips), seed=4)
    batches = [DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers, collate_fn=collate_clips)
               for workers in (0, 2)]
    count = 0
    for a, b in zip(*batches):
        for key in ("wave", "length", "rate", "target", "teacher", "index"):
            torch.testing.assert_close(a[key], b[key])
        count += 1
    assert count == 4

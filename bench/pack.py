"""Packed audio against WAV files: bytes per codec, `fat pack` speed, reader speed, DVC hashing.

Writes a synthetic corpus that resembles AudioSet (10-s, 32 kHz mono PCM-16 WAVs: speech-like
formant syllables, music-like chords and drums, coloured noise, mixtures; silence gaps, a noise
floor, and, in most clips, the missing top octave of a lossy YouTube source), as loud as uploads
are: each kind at its own RMS level, soft-limited to a peak of −9…−1 dBFS (music loudest,
`LEVELS_DBFS`), over a noise floor of −66…−52 dBFS. FLAC's bytes grow with loudness (each 6 dB
is one more bit per sample), so the level decides the ratio as much as the content does.
Then in one run:

1. bytes on disk: `fat pack` of the first `--distinct` clips (all different) with each codec
   setting, against the WAV files' bytes; per kind of content too;
2. `fat pack` throughput: clips/s of the whole command with `--workers` processes, for FLAC over
   every clip and for Vorbis over the distinct ones;
3. reader: clips per CPU-second of one DataLoader worker reading random ids and decoding them to
   waveforms (no features): packed FLAC, packed Vorbis, WAV files through read_audio;
4. shard layout: CPU per clip to fetch encoded bytes from one contiguous uint8 blob (what shards
   use) against one HDF5 variable-length element per clip;
5. DVC (as bench/dvc_hash.py): first `dvc commit` and a no-change `dvc status` of the packed split
   against the same clips as WAV files, in one fresh git + DVC repository (hard-link cache).
   `dvc status` of a one-file stage is timed too: DVC's own start-up, in every figure.

Files are in the page cache when read (just written): ratios, not cold-disk figures.

    .venv/bin/python -m bench.pack                      # 5,000 clips (3.2 GB of WAV), ~10 min on 2 cores
    .venv/bin/python -m bench.pack --clips 600 --distinct 200 --skip-dvc
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
from scipy.signal import lfilter

from bench.dvc_hash import dvc
from pipeline.core.audio import read_audio, write_wav
from pipeline.packed.reader import PackedAudio

RATE = 32000
SECONDS = 10.0
KINDS = ("speech", "music", "noise", "mix")
KIND_WEIGHTS = (0.35, 0.30, 0.20, 0.15)
# How loud uploads are, per kind: (RMS, peak ceiling) ranges in dBFS. Music is mastered loud (about −14 … −8
# LUFS) and limited to just under full scale; speech over music (vlogs, TV) a little lower; speech and ambience
# recordings lower still; every kind peaks at −9 … −1 dBFS.
LEVELS_DBFS = {"speech": ((-26.0, -18.0), (-9.0, -3.0)), "music": ((-16.0, -9.0), (-3.0, -1.0)),
               "noise": ((-30.0, -16.0), (-9.0, -3.0)), "mix": ((-20.0, -13.0), (-6.0, -1.0))}
NOISE_FLOOR_DBFS = (-66.0, -52.0)  # the recording's own noise, RMS
SETTINGS = {  # label → fat pack options
    "flac (default, level 8)": ["--codec", "flac"],
    "flac level 5": ["--codec", "flac", "--flac-level", "5"],
    "vorbis q4 (default)": ["--codec", "vorbis"],
    "vorbis q2": ["--codec", "vorbis", "--vorbis-quality", "2"],
}
STATUS_ROUNDS = 5
AUDIOSET_CLIPS = 1_740_000
DVC_STAGES = """stages:
  wav:
    cmd: "true"
    outs:
      - data/audio:
          persist: true
  packed:
    cmd: "true"
    outs:
      - data/packed:
          persist: true
  vorbis:
    cmd: "true"
    outs:
      - data/packed_vorbis:
          persist: true
  tiny:
    cmd: "true"
    outs:
      - data/tiny.txt
"""


# -- an AudioSet-like corpus ---------------------------------------------------------------

def coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f^slope (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** (-slope / 2), n)
    return noise / (noise.std() + 1e-12)


def resonate(signal: np.ndarray, centre: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (one formant)."""
    radius = np.exp(-np.pi * bandwidth / RATE)
    a = [1.0, -2 * radius * np.cos(2 * np.pi * centre / RATE), radius * radius]
    return lfilter([1.0 - radius], a, signal)


def speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Syllables: a glottal sawtooth with vibrato through three formants, some fricatives, pauses."""
    out = np.zeros(n)
    position = int(rng.uniform(0, 0.5) * RATE)
    pitch = rng.uniform(90, 240)
    while position < n:
        length = min(int(rng.uniform(0.08, 0.3) * RATE), n - position)
        t = np.arange(length) / RATE
        if rng.random() < 0.2:
            sound = np.diff(rng.standard_normal(length + 1)) * 0.5  # fricative: noise tilted upwards
        else:
            f0 = pitch * rng.uniform(0.85, 1.15) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 6) * t))
            source = (np.cumsum(f0) / RATE) % 1.0 - 0.5
            sound = sum(resonate(source, rng.uniform(*band), rng.uniform(60, 160)) * weight
                        for band, weight in (((300, 900), 1.0), ((900, 2500), 0.6), ((2500, 3500), 0.3)))
        out[position:position + length] += sound * np.hanning(length)
        position += length + int(rng.uniform(0.02, 0.15 if rng.random() < 0.8 else 0.8) * RATE)
    return out


def music(rng: np.random.Generator, n: int) -> np.ndarray:
    """Chords of harmonic notes on a beat, with kick and hi-hat in half the clips."""
    out = np.zeros(n)
    beat = int(60 / rng.uniform(80, 160) * RATE)
    root = rng.integers(45, 60)
    drums = rng.random() < 0.5
    for step, start in enumerate(range(0, n, beat)):
        length = min(int(beat * rng.choice([1, 2])), n - start)
        t = np.arange(length) / RATE
        decay = np.exp(-t / rng.uniform(0.2, 0.8))
        for interval in rng.choice([0, 3, 4, 7, 10, 12], size=3, replace=False):
            f0 = 440 * 2 ** ((root + interval + rng.choice([0, 2, 5]) - 69) / 12)
            partials = [k for k in range(1, 9) if k * f0 < RATE / 2]
            out[start:start + length] += decay * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in partials) / 3
        if drums:
            kick = np.sin(2 * np.pi * np.cumsum(np.linspace(150, 45, min(length, 4000))) / RATE)
            if step % 2 == 0:
                out[start:start + kick.size] += 0.8 * kick * np.exp(-np.arange(kick.size) / 1500)
            hat = min(length, 800)
            out[start:start + hat] += 0.2 * np.diff(rng.standard_normal(hat + 1)) * np.exp(-np.arange(hat) / 200)
    return out


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Wind, traffic, rain: coloured noise under a slow random envelope, with a few impacts."""
    envelope = np.abs(np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(0.2, 1.0, 12)))
    out = coloured_noise(rng, n, rng.uniform(0.3, 2.0)) * envelope
    for _ in range(rng.integers(0, 4)):
        at, length = rng.integers(0, n - 8000), 8000
        out[at:at + length] += 3 * rng.standard_normal(length) * np.exp(-np.arange(length) / 1200)
    return out


def make_clip(index: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """Clip `index` of the corpus: (kind, float32 samples in [-1, 1])."""
    rng = np.random.default_rng([seed, index])
    n = int(SECONDS * RATE)
    kind = KINDS[rng.choice(len(KINDS), p=KIND_WEIGHTS)]
    if kind == "mix":
        background = music(rng, n) if rng.random() < 0.5 else noise(rng, n)
        audio = speech(rng, n) / 0.2 + rng.uniform(0.3, 0.6) * background / (background.std() + 1e-9)
    else:
        audio = {"speech": speech, "music": music, "noise": noise}[kind](rng, n)
    rms_db, ceiling_db, floor_db = (rng.uniform(*LEVELS_DBFS[kind][0]), rng.uniform(*LEVELS_DBFS[kind][1]),
                                    rng.uniform(*NOISE_FLOOR_DBFS))
    audio = audio * 10 ** (rms_db / 20) / (audio.std() + 1e-12)
    for _ in range(rng.integers(0, 3)):  # silence gaps (digital zero, as cut or muted uploads have)
        at = rng.integers(0, n)
        audio[at:at + int(rng.uniform(0.3, 1.5) * RATE)] = 0.0
    audio += coloured_noise(rng, n, 1.0) * 10 ** (floor_db / 20)  # the recording's own noise
    if rng.random() < 0.7:  # the lossy source's missing top octave
        spectrum = np.fft.rfft(audio)
        spectrum[np.fft.rfftfreq(n, 1 / RATE) > rng.uniform(7000, 15500)] = 0
        audio = np.fft.irfft(spectrum, n)
    ceiling = 10 ** (ceiling_db / 20)
    audio = ceiling * np.tanh(audio / ceiling)  # a soft limiter, as uploads are mastered to a ceiling
    return kind, audio.astype(np.float32)


def _write_one(task: tuple[int, int, str]) -> tuple[str, str, int]:
    """(id, kind, bytes) of one WAV. Clips past `distinct` are rolled, re-levelled copies of earlier
    ones (read back from their files, which the first pass wrote): distinct bytes, same statistics."""
    index, distinct, folder = task
    if index < distinct:
        kind, audio = make_clip(index)
    else:
        base = next(Path(folder).glob(f"*-{index % distinct:06d}.wav"))
        kind, audio = base.stem.split("-")[0], sf.read(base, dtype="float32")[0]
        rng = np.random.default_rng([1, index])
        audio = np.roll(audio, int(rng.integers(RATE, len(audio)))) * np.float32(rng.uniform(0.6, 1.0))
    clip_id = f"{kind}-{index:06d}"
    path = Path(folder) / f"{clip_id}.wav"
    write_wav(path, audio, RATE)
    return clip_id, kind, path.stat().st_size


def write_corpus(audio_dir: Path, datafile_dir: Path, clips: int, distinct: int, workers: int) -> dict:
    """WAVs, a datafile of all clips and one of the distinct ones, with a label CSV."""
    audio_dir.mkdir(parents=True)
    datafile_dir.mkdir(parents=True)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        rows = pool.map(_write_one, [(i, distinct, str(audio_dir)) for i in range(distinct)], chunksize=4)
        rows += pool.map(_write_one, [(i, distinct, str(audio_dir)) for i in range(distinct, clips)], chunksize=32)
    (datafile_dir / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/096m7z,"Noise"\n')
    label = {"speech": "/m/09x0r", "music": "/m/04rlf", "noise": "/m/096m7z", "mix": "/m/09x0r,/m/04rlf"}

    def datafile(name: str, chosen: list) -> Path:
        entries = [{"wav": os.path.relpath(audio_dir / f"{i}.wav", datafile_dir), "labels": label[k], "id": i}
                   for i, k, _ in chosen]
        path = datafile_dir / f"{name}.json"
        path.write_text(json.dumps({"data": entries}))
        return path

    return {"all": datafile("bench", rows), "distinct": datafile("distinct", rows[:distinct]),
            "kinds": {i: k for i, k, _ in rows}, "wav_bytes": {i: b for i, _, b in rows}}


# -- measurements --------------------------------------------------------------------------

def fat_pack(datafile: Path, out: Path, options: list[str], workers: int) -> dict:
    """Run `fat pack` as its own process; its summary plus the command's wall time."""
    summary = out.with_name(out.name + ".summary.json")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "pack", "--datafile", str(datafile), "--out-dir",
                           str(out), "--workers", str(workers), "--summary", str(summary), *options],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fat pack failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(summary.read_text())
    figures["wall_seconds"] = time.perf_counter() - started
    return figures


def clip_sizes(store: Path) -> dict[str, int]:
    """Encoded bytes per clip id, from the shards' offsets."""
    sizes: dict[str, int] = {}
    for shard in sorted(store.glob("shard-*.h5")):
        with h5py.File(shard, "r", locking=False) as handle:
            sizes.update(zip(handle["ids"].asstr()[()], np.diff(handle["offsets"][()]).tolist(), strict=True))
    return sizes


class TimedReads(torch.utils.data.IterableDataset):
    """In one DataLoader worker: read the given ids, then yield the CPU seconds that took (negated)."""

    def __init__(self, read, keys: list) -> None:
        self.read, self.keys = read, keys

    def __iter__(self):
        torch.set_num_threads(1)
        started = time.process_time()
        for key in self.keys:
            wave, _ = self.read(key)
            yield wave.shape[0]
        yield -(time.process_time() - started)


def worker_clips_per_cpu_second(read, keys: list) -> float:
    loader = torch.utils.data.DataLoader(TimedReads(read, keys), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    items = list(loader)
    assert all(v > 0 for v in items[:-1]) and len(items) == len(keys) + 1
    return len(keys) / -items[-1]


def layout_cpu_per_read(store: Path, reads: int, tmp: Path) -> dict[str, float]:
    """ms of CPU to fetch one clip's bytes: from the shard's contiguous blob vs from a vlen-bytes dataset."""
    shard = sorted(store.glob("shard-*.h5"))[0]
    with h5py.File(shard, "r", locking=False) as handle:
        offsets = handle["offsets"][()]
        blobs = [handle["audio"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    vlen = tmp / "vlen.h5"
    with h5py.File(vlen, "w") as handle:
        data = handle.create_dataset("audio", (len(blobs),), dtype=h5py.vlen_dtype(np.uint8))
        for i, blob in enumerate(blobs):
            data[i] = blob
    rows = np.random.default_rng(0).integers(0, len(blobs), reads)
    figures = {}
    with h5py.File(shard, "r", locking=False) as handle:
        audio = handle["audio"]
        started = time.process_time()
        for i in rows:
            audio[offsets[i]:offsets[i + 1]].tobytes()
        figures["contiguous blob + offsets"] = (time.process_time() - started) / reads * 1000
    with h5py.File(vlen, "r", locking=False) as handle:
        audio = handle["audio"]
        started = time.process_time()
        for i in rows:
            audio[i].tobytes()
        figures["vlen bytes per clip"] = (time.process_time() - started) / reads * 1000
    figures["mean clip KB"] = float(np.mean([b.size for b in blobs]) / 1000)
    return figures


def flac_decode_ms(store: Path, reads: int) -> float:
    """ms of CPU to decode one FLAC clip from bytes in memory (soundfile)."""
    shard = sorted(store.glob("shard-*.h5"))[0]
    with h5py.File(shard, "r", locking=False) as handle:
        offsets = handle["offsets"][()]
        data = [handle["audio"][offsets[i]:offsets[i + 1]].tobytes() for i in range(min(reads, len(offsets) - 1))]
    started = time.process_time()
    for blob in data:
        sf.read(io.BytesIO(blob), dtype="float32")
    return (time.process_time() - started) / len(data) * 1000


# -- the run -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=5000, help="WAV files of 10 s in the split (default: 5000)")
    parser.add_argument("--distinct", type=int, default=400,
                        help="clips that are all different: bytes per codec are measured on these (default: 400)")
    parser.add_argument("--reads", type=int, default=200, help="random reads per reader measurement (default: 200)")
    parser.add_argument("--workers", type=int, default=2, help="fat pack --workers (default: 2)")
    parser.add_argument("--shard-clips", type=int, default=1000, help="fat pack --shard-clips (default: 1000)")
    parser.add_argument("--skip-dvc", action="store_true", help="leave out the DVC timings")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the files go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    args.distinct = min(args.distinct, args.clips)
    work = Path(tempfile.mkdtemp(prefix="fat-bench-pack-", dir=args.work_dir))
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "load_average_start": os.getloadavg()[0], "clips": args.clips, "distinct": args.distinct}
    try:
        repo = work / "repo"
        repo.mkdir()
        started = time.perf_counter()
        corpus = write_corpus(repo / "data" / "audio", work / "datafiles", args.clips, args.distinct, args.workers)
        print(f"corpus: {args.clips} WAVs ({sum(corpus['wav_bytes'].values()) / 1e9:.2f} GB) in "
              f"{time.perf_counter() - started:.0f} s; {args.distinct} distinct", flush=True)
        results["codecs"] = measure_codecs(corpus, work, args)
        results["pack"] = measure_pack(corpus, repo, args, results["codecs"])
        results["reader"] = measure_reader(corpus, repo, work, args)
        results["layout"] = layout_cpu_per_read(repo / "data" / "packed", args.reads, work)
        results["layout"]["flac decode"] = flac_decode_ms(repo / "data" / "packed", args.reads)
        print("\nshard layout: CPU ms per clip to fetch its encoded bytes (mean clip "
              f"{results['layout']['mean clip KB']:.0f} KB): " + ", ".join(
                  f"{k} {v:.3f}" for k, v in results["layout"].items() if k != "mean clip KB"), flush=True)
        if not args.skip_dvc:
            results["dvc"] = measure_dvc(repo)
        results["load_average_end"] = os.getloadavg()[0]
        print(f"\nmachine: {results['machine']}; load average {results['load_average_start']:.1f} at the start, "
              f"{results['load_average_end']:.1f} at the end")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_codecs(corpus: dict, work: Path, args: argparse.Namespace) -> dict:
    """Bytes of each codec setting against the WAVs, over the distinct clips, overall and per kind."""
    ids = list(corpus["kinds"])[:args.distinct]
    wav = {i: corpus["wav_bytes"][i] for i in ids}
    rows = {}
    print(f"\nbytes on disk, {len(ids)} distinct 10-s clips (WAV: {sum(wav.values()) / 1e6:.0f} MB):")
    print(f"| setting | encoded bytes vs WAV | shard files vs WAV | {' | '.join(KINDS)} | fat pack clips/s |")
    for label, options in SETTINGS.items():
        out = work / "codecs" / label.split(" (")[0].replace(" ", "-")
        figures = fat_pack(corpus["distinct"], out, options + ["--shard-clips", str(args.shard_clips)], args.workers)
        sizes = clip_sizes(out)
        per_kind = {}
        for kind in KINDS:
            chosen = [i for i in ids if corpus["kinds"][i] == kind]
            per_kind[kind] = sum(sizes[i] for i in chosen) / sum(wav[i] for i in chosen) if chosen else None
        shard_bytes = sum(p.stat().st_size for p in out.glob("shard-*.h5"))  # + HDF5's structure, ids and columns
        rows[label] = {"ratio": sum(sizes.values()) / sum(wav.values()), "file_ratio": shard_bytes / sum(wav.values()),
                       "per_kind": per_kind, "clips_per_second": figures["clips_per_second"],
                       "wall_seconds": figures["wall_seconds"]}
        kinds = " | ".join(f"{v:.3f}" if v is not None else "-" for v in per_kind.values())
        print(f"| {label} | {rows[label]['ratio']:.3f} | {rows[label]['file_ratio']:.3f} | {kinds} | "
              f"{figures['clips_per_second']} |", flush=True)
    counts = {kind: sum(corpus["kinds"][i] == kind for i in ids) for kind in KINDS}
    print("clips per kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return rows


def measure_pack(corpus: dict, repo: Path, args: argparse.Namespace, codecs: dict) -> dict:
    """The packed split the DVC part uses: every clip, FLAC, the whole `fat pack` command timed."""
    figures = fat_pack(corpus["all"], repo / "data" / "packed", ["--shard-clips", str(args.shard_clips)],
                       args.workers)
    print(f"\nfat pack --workers {args.workers}, FLAC, {args.clips} clips: {figures['clips_per_second']} clips/s "
          f"(whole command {args.clips / figures['wall_seconds']:.1f} clips/s, {figures['wall_seconds']:.0f} s); "
          f"{figures['bytes'] / figures['source_bytes']:.3f} of the WAV bytes", flush=True)
    if args.skip_dvc:
        return {"flac": figures}
    vorbis = fat_pack(corpus["all"], repo / "data" / "packed_vorbis",
                      ["--codec", "vorbis", "--shard-clips", str(args.shard_clips)], args.workers)
    print(f"fat pack --workers {args.workers}, Vorbis q4, {args.clips} clips (for DVC): {vorbis['clips_per_second']} "
          f"clips/s; {vorbis['bytes'] / vorbis['source_bytes']:.3f} of the WAV bytes", flush=True)
    return {"flac": figures, "vorbis": vorbis}


def measure_reader(corpus: dict, repo: Path, work: Path, args: argparse.Namespace) -> dict:
    """Clips per CPU-second of one DataLoader worker, random ids of the distinct clips."""
    ids = list(corpus["kinds"])[:args.distinct]
    keys = [str(k) for k in np.random.default_rng(0).choice(ids, size=args.reads)]
    audio_dir = repo / "data" / "audio"
    readers = {
        "packed FLAC": PackedAudio(repo / "data" / "packed").read,
        "packed Vorbis q4": PackedAudio(work / "codecs" / "vorbis-q4").read,
        "WAV files (read_audio)": lambda clip_id: read_audio(audio_dir / f"{clip_id}.wav"),
    }
    rates = {}
    print(f"\nreader, one DataLoader worker, {args.reads} random ids → float32 waveforms:")
    for label, read in readers.items():
        rates[label] = worker_clips_per_cpu_second(read, keys)
        print(f"| {label} | {rates[label]:.0f} clips per CPU-second |", flush=True)
    return rates


def measure_dvc(repo: Path) -> dict:
    """First commit and no-change status of each output, and of a one-file stage (DVC's start-up)."""
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "config", "cache.type", "hardlink,symlink,copy")
    (repo / "dvc.yaml").write_text(DVC_STAGES)
    (repo / "data" / "tiny.txt").write_text("x\n")
    folders = {"wav": "audio", "packed": "packed", "vorbis": "packed_vorbis"}
    files = {**{stage: len(list((repo / "data" / sub).iterdir())) for stage, sub in folders.items()}, "tiny": 1}
    sizes = {stage: sum(p.stat().st_size for p in (repo / "data" / sub).iterdir()) for stage, sub in folders.items()}
    figures = {stage: {"files": files[stage], "commit": dvc(repo, "commit", "-f", stage)} for stage in files}
    for _ in range(STATUS_ROUNDS):  # round-robin, so machine noise falls on every output alike
        for stage in files:
            figures[stage].setdefault("status_rounds", []).append(dvc(repo, "status", stage))
    for stage in files:
        figures[stage]["status"] = float(np.median(figures[stage]["status_rounds"]))
        figures[stage]["bytes"] = sizes.get(stage, 2)
    print("\nDVC, hard-link cache, files just written (page cache); status: median of "
          f"{STATUS_ROUNDS} rounds:")
    print("| output | files | GB | first commit s | no-change status s |")
    for stage, row in figures.items():
        print(f"| {stage} | {row['files']} | {row['bytes'] / 1e9:.2f} | {row['commit']:.2f} | {row['status']:.2f} |")
    base = figures["tiny"]
    for what in ("commit", "status"):
        wav = figures["wav"][what]
        beyond = ", ".join(f"{stage} {figures[stage][what] - base[what]:.2f} s" for stage in folders)
        print(f"{what}: WAV / packed FLAC = {wav / figures['packed'][what]:.2f}×, WAV / packed Vorbis = "
              f"{wav / figures['vorbis'][what]:.2f}×; beyond DVC's start-up (the one-file stage's "
              f"{base[what]:.2f} s): {beyond}")
    wav_clips = figures["wav"]["files"]
    per_file = {what: max(figures["wav"][what] - base[what], 0.0) / wav_clips for what in ("commit", "status")}
    per_byte = max(figures["packed"]["commit"] - base["commit"], 0.0) / figures["packed"]["bytes"]
    full_packed_bytes = AUDIOSET_CLIPS * figures["packed"]["bytes"] / wav_clips
    print(f"extrapolated to {AUDIOSET_CLIPS / 1e6:.2f} M clips: WAV first commit ≈ "
          f"{AUDIOSET_CLIPS * per_file['commit'] / 3600:.1f} h, status ≈ "
          f"{AUDIOSET_CLIPS * per_file['status'] / 60:.0f} min; packed FLAC ({full_packed_bytes / 1e12:.2f} TB) "
          f"first commit ≈ {full_packed_bytes * per_byte / 3600:.1f} h at this run's rate, status ≈ DVC's start-up "
          "(a few hundred files)")
    return figures


if __name__ == "__main__":
    main()

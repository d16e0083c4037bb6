"""`fat train`: the AST student (+ ToMe) on λ·label + (1 − λ)·KD with a precomputed teacher store."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import add_command

BOOL = argparse.BooleanOptionalAction


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "train", "train the AST student with token merging and knowledge distillation",
        description=(
            "Train an AST student on an AST datafile: 16 kHz kaldi fbank, SpecAugment, waveform mixup,\n"
            "loss = λ·BCE(z, y) + (1−λ)·BCE(z, sigmoid(t/T)) with teacher logits t from `fat logits`\n"
            "(single-label: cross-entropy + T²·KL of softmaxes). Validates every epoch and, with weight\n"
            "averaging, the averaged model at the end. Writes into --out:\n"
            "  student.pt        the final model (weight-averaged when --wa), for `fat evaluate`\n"
            "  train_state.pt    everything needed by --resume (rewritten each epoch and on SIGTERM)\n"
            "  result.json       final metrics and the epoch history\n"
            "  epochs.csv, steps.csv, dvclive/   logs, metrics and plots\n"
            "Many GPUs / machines: torchrun --nproc_per_node N -m pipeline.cli train ... (--batch-size is\n"
            "per process). SIGTERM saves the state at the next step and exits with status 143.\n"
            "Example: fat train --train data/datafiles/balanced_train/balanced_train.json \\\n"
            "           --valid data/datafiles/eval/eval.json \\\n"
            "           --teacher data/logits/mn10_as.h5 --kd-lambda 0.1 --tome-r 8 --out models/student"
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train", type=Path, nargs="+", required=True, metavar="DATAFILE",
                      help="training datafile(s) (AST JSON), several are drawn from as one list "
                           "(e.g. balanced + unbalanced AudioSet); required, default: none")
    data.add_argument("--valid", type=Path, required=True, help="validation datafile (AST JSON), scored every epoch; required, default: none")
    data.add_argument("--labels", type=Path, default=None,
                      help="label CSV index,mid,display_name (default: class_labels_indices.csv beside the first --train)")
    data.add_argument("--teacher", type=Path, default=None,
                      help="teacher logits store (HDF5 from `fat logits`); needed when --kd-lambda < 1 (default: none)")
    data.add_argument("--missing-teacher", choices=("error", "mask"), default="error",
                      help="training clips without a teacher row: error (name them and stop) or mask (leave them "
                           "out of the KD term)")
    data.add_argument("--out", type=Path, required=True, help="output folder of this experiment, e.g. models/student; required, default: none")

    model = parser.add_argument_group("model")
    model.add_argument("--model-size", choices=("tiny224", "small224", "base224", "base384"), default="base384",
                       help="DeiT backbone of the AST")
    model.add_argument("--fstride", type=int, default=10, help="patch stride along frequency (mel bins)")
    model.add_argument("--tstride", type=int, default=10, help="patch stride along time (frames)")
    model.add_argument("--target-frames", type=int, default=1024, help="input length in 10 ms frames (pad/cut)")
    model.add_argument("--num-mel-bins", type=int, default=128, help="fbank mel bins")
    model.add_argument("--imagenet-weights", type=Path, default=None,
                       help="local timm DeiT-distilled state-dict file to start from (default: none)")
    model.add_argument("--ast-checkpoint", type=Path, default=None,
                       help="AST checkpoint to start from, e.g. a released AudioSet model (default: none)")
    model.add_argument("--tome-r", nargs="+", default=["0"], metavar="R",
                       help="tokens merged per block while training: 16, per layer 16 16 8 (or 16,16,8), or a "
                            "schedule 16:-1; 0 = plain AST")
    model.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (0..1)")
    model.add_argument("--grad-checkpointing", action=BOOL, default=False,
                       help="recompute block activations in backward to save GPU memory (r = 0 only)")

    feats = parser.add_argument_group("features and augmentation")
    feats.add_argument("--norm-mean", type=float, default=-4.2677393, help="fbank mean (AudioSet's; natural-log mel power units)")
    feats.add_argument("--norm-std", type=float, default=4.5689974, help="fbank std (AudioSet's)")
    feats.add_argument("--freqm", type=int, default=48, help="SpecAugment max frequency-mask width (mel bins; 0 = off)")
    feats.add_argument("--timem", type=int, default=192, help="SpecAugment max time-mask width (frames; 0 = off)")
    feats.add_argument("--mixup", type=float, default=0.5,
                       help="fraction of training clips mixed with a random partner on the waveform (0..1)")
    feats.add_argument("--noise", action=BOOL, default=False,
                       help="add AST's uniform fbank noise (Speech Commands recipe)")
    feats.add_argument("--time-shift", type=int, default=0,
                       help="circular time roll by up to this many frames (AST's Speech Commands: 10; 0 = off)")

    objective = parser.add_argument_group("objective")
    objective.add_argument("--loss", choices=("bce", "ce"), default="bce",
                           help="bce: multi-label (sigmoid KD); ce: single-label (softmax-temperature KL)")
    objective.add_argument("--metric", choices=("auto", "map", "accuracy"), default="auto",
                           help="main validation metric; auto = map for bce, accuracy for ce")
    objective.add_argument("--kd-lambda", type=float, default=0.1,
                           help="λ: weight of the label loss; 1 − λ weighs the KD loss (1 = no teacher)")
    objective.add_argument("--kd-temperature", type=float, default=1.0, help="KD temperature T (dividing teacher logits)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=25, help="training epochs")
    optim.add_argument("--batch-size", type=int, default=12, help="clips per batch per process")
    optim.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (Adam)")
    optim.add_argument("--weight-decay", type=float, default=5e-7, help="Adam L2 weight decay")
    optim.add_argument("--adam-betas", type=float, nargs=2, default=[0.95, 0.999], metavar=("B1", "B2"),
                       help="Adam betas")
    optim.add_argument("--warmup-steps", type=int, default=1000,
                       help="linear learning-rate warm-up (optimiser steps; 0 = off)")
    optim.add_argument("--lr-decay-start", type=int, default=10, help="epochs before the first step decay")
    optim.add_argument("--lr-decay-step", type=int, default=5, help="epochs between step decays")
    optim.add_argument("--lr-decay-factor", type=float, default=0.5, help="learning-rate factor at each decay")
    optim.add_argument("--wa", action=BOOL, default=True,
                       help="final model = mean of the weights after epochs --wa-start..--wa-end")
    optim.add_argument("--wa-start", type=int, default=6, help="first epoch in the weight average (1-based)")
    optim.add_argument("--wa-end", type=int, default=25, help="last epoch in the weight average (1-based, inclusive)")
    optim.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm to this (0 = off)")
    optim.add_argument("--accum-steps", type=int, default=1, help="batches accumulated per optimiser step")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--balanced", action=BOOL, default=False,
                          help="AST's balanced sampling: per-clip weights from label frequencies, with replacement")
    sampling.add_argument("--epoch-size", type=int, default=0,
                          help="clips per epoch over all processes (0 = the training set's size)")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="auto = cuda when available (torchrun: one GPU per process)")
    runtime.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                         help="autocast: auto = bf16 on GPUs that support it, else fp16 + grad scaler; off on CPU")
    runtime.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes per process")
    runtime.add_argument("--eval-batch-size", type=int, default=0, help="validation batch (clips; 0 = 2 × --batch-size)")
    runtime.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch's default)")
    runtime.add_argument("--seed", type=int, default=0, help="seed of initial weights, sampling and augmentation")
    runtime.add_argument("--resume", action=BOOL, default=False,
                         help="continue the run saved in --out exactly where it stopped (fresh start if none)")
    runtime.add_argument("--keep-epoch-checkpoints", action=BOOL, default=False,
                         help="also write epoch_<n>.pt student files (default: only student.pt)")
    runtime.add_argument("--log-every", type=int, default=20, help="optimiser steps between steps.csv rows")
    runtime.add_argument("--progress", action=BOOL, default=None,
                         help="progress bar with loss and clips/s (default: when stderr is a terminal)")
    runtime.add_argument("--dvclive", action=BOOL, default=True, help="write DVCLive metrics and plots to <out>/dvclive")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig these options describe."""
    from pipeline.datafile import label_csv_beside
    from pipeline.training import TrainConfig

    labels = args.labels if args.labels is not None else label_csv_beside(args.train[0])
    tome_r = args.tome_r[0] if len(args.tome_r) == 1 else ",".join(args.tome_r)
    return TrainConfig(
        train=args.train, valid=args.valid, labels=labels, out=args.out, teacher=args.teacher,
        missing_teacher=args.missing_teacher, model_size=args.model_size, fstride=args.fstride,
        tstride=args.tstride, target_frames=args.target_frames, num_mel_bins=args.num_mel_bins,
        imagenet_weights=args.imagenet_weights, ast_checkpoint=args.ast_checkpoint, tome_r=tome_r,
        drop_path=args.drop_path, grad_checkpointing=args.grad_checkpointing, norm_mean=args.norm_mean,
        norm_std=args.norm_std, freqm=args.freqm, timem=args.timem, mixup=args.mixup, noise=args.noise,
        time_shift=args.time_shift, loss=args.loss, metric=args.metric, kd_lambda=args.kd_lambda,
        kd_temperature=args.kd_temperature, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, beta1=args.adam_betas[0], beta2=args.adam_betas[1],
        warmup_steps=args.warmup_steps, lr_decay_start=args.lr_decay_start, lr_decay_step=args.lr_decay_step,
        lr_decay_factor=args.lr_decay_factor, wa=args.wa, wa_start=args.wa_start, wa_end=args.wa_end,
        grad_clip=args.grad_clip, accum_steps=args.accum_steps, balanced=args.balanced,
        epoch_size=args.epoch_size, device=args.device, amp=args.amp, num_workers=args.num_workers,
        eval_batch_size=args.eval_batch_size, seed=args.seed, resume=args.resume,
        keep_epoch_checkpoints=args.keep_epoch_checkpoints, log_every=args.log_every, progress=args.progress,
        dvclive=args.dvclive,
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import FatError
    from pipeline.training import INTERRUPTED_EXIT, train
    from student.errors import StudentError

    if args.threads < 0:
        raise FatError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = train(config_from_args(args))
    except StudentError as exc:
        raise FatError(str(exc)) from None
    return 0 if result.status == "finished" else INTERRUPTED_EXIT

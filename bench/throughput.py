"""Training throughput: remflow's loop against a torchvision DataLoader + per-sample transforms loop.

Both train the same model (same architecture, init, optimiser, batch size, augmentation: random crop with
padding + horizontal flip + normalisation) on the same data, on the same machine, in one run:

- remflow: uint8 images held as one tensor on the device, augmented in batches (`Task.batches`), trained by
  `remflow.train.train`;
- baseline: a `Dataset` that turns each sample into a PIL image and applies torchvision's RandomCrop,
  RandomHorizontalFlip, ToTensor and Normalize, batched by a `DataLoader` (num_workers 0 and 2; the faster one
  is the baseline), trained by a plain loop with torch.optim.SGD.

    python bench/throughput.py                      # the default suite's setting: digits, small CNN
    python bench/throughput.py --dataset fashion_mnist --train-size 10000
    python bench/throughput.py --dataset fashion_mnist --pad-to 32 --model resnet9 --width 32 --batch-size 512 \
        --padding 4          # the paper suite's setting (pipelines/fashion-mnist-paper; on a GPU: bench/gpu_paper.sh)

The last line is `speedup: X.XX` (remflow's images/s over the best DataLoader configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from remflow.data.datasets import Splits, load_splits  # noqa: E402
from remflow.data.task import Task  # noqa: E402
from remflow.models import build_model  # noqa: E402
from remflow.params import AugmentCfg, CnnCfg, DataCfg, Recipe, ResNet9Cfg  # noqa: E402
from remflow.train import Data, Phase, cross_entropy, make_optimizer, setup_runtime, train  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist", "cifar10", "svhn", "synthetic"],
                   help="synthetic: random CIFAR-shaped uint8 images (throughput only; for machines without data)")
    p.add_argument("--root", default=None)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--pad-to", type=int, default=None, help="data.pad_to: zero-pad the images (Fashion-MNIST 28 to 32)")
    p.add_argument("--model", default="cnn", choices=["cnn", "resnet9"])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--steps", type=int, default=300, help="timed optimiser steps per pipeline")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values to try")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def model_for(args, splits):
    cfg = CnnCfg(name="cnn", width=args.width) if args.model == "cnn" else ResNet9Cfg(name="resnet9", width=args.width)
    torch.manual_seed(0)
    return build_model(cfg, splits.in_channels, splits.num_classes, splits.image_size)


def remflow_loop(args, splits, device) -> float:
    task = Task(splits, device, augment=AugmentCfg(crop_padding=args.padding, flip=True),
                channels_last=device.type == "cuda")
    model = model_for(args, splits).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    recipe = Recipe(lr=0.01, batch_size=args.batch_size, epochs=1, schedule="constant")
    opt = make_optimizer(model.parameters(), recipe)
    gen = task.generator(0)
    per_epoch = task.num_train // args.batch_size

    def batches():
        order = torch.randperm(task.num_train, generator=gen, device=device)
        for s in range(per_epoch):
            yield task.batch(order[s * args.batch_size : (s + 1) * args.batch_size], gen)

    def run(steps):
        epochs = -(-steps // per_epoch)
        train(model, opt, Phase("remflow", cross_entropy, Data(per_epoch, batches), epochs, max_steps=steps),
              device=device)

    run(args.warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


class PerSampleDataset(torch.utils.data.Dataset):
    """The textbook pipeline: one PIL image per sample, torchvision transforms per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, padding: int):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.gray = images.shape[1] == 1
        self.transform = T.Compose([
            T.RandomCrop(images.shape[2], padding=padding),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        pil = Image.fromarray(img[0] if self.gray else img.transpose(1, 2, 0))
        return self.transform(pil), int(self.labels[i])


def dataloader_loop(args, splits, device, workers: int) -> float:
    ds = PerSampleDataset(splits.train_x, splits.train_y, splits.mean, splits.std, args.padding)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))
    model = model_for(args, splits).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(steps):
        done = 0
        while done < steps:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done >= steps:
                    return

    run(args.warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    args = parse()
    os.environ.setdefault("REMFLOW_PROGRESS", "plain")
    from remflow.params import RuntimeCfg

    device = setup_runtime(RuntimeCfg(device=args.device, threads=args.threads))
    if args.dataset == "synthetic":
        rng = np.random.default_rng(0)
        n = args.train_size or 20000
        x, y = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)
        splits = Splits("synthetic", x, y, x[:256], y[:256], x[:256], y[:256], 10, (0.5,) * 3, (0.25,) * 3)
    else:
        splits = load_splits(DataCfg(dataset=args.dataset, root=args.root, train_size=args.train_size,
                                     val_fraction=0.1, pad_to=args.pad_to))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"data: {args.dataset} {splits.train_x.shape[1:]} x {len(splits.train_y)}; model: {args.model} "
          f"width {args.width}; batch {args.batch_size}; crop padding {args.padding} + flip; {args.steps} timed steps")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    workers = [int(v) for v in args.workers.split(",")]
    ours, theirs = [], {w: [] for w in workers}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits both sides
        sys.stderr = open(os.devnull, "w")  # silence the per-epoch progress lines of train()
        ours.append(remflow_loop(args, splits, device))
        sys.stderr = sys.__stderr__
        for w in workers:
            theirs[w].append(dataloader_loop(args, splits, device, w))
    med = lambda v: float(np.median(v))  # noqa: E731
    print(f"remflow (device-resident uint8, batched augmentation): {med(ours):10.0f} images/s")
    for w in workers:
        print(f"DataLoader + per-sample transforms, num_workers={w}: {med(theirs[w]):10.0f} images/s "
              f"(remflow x{med(ours) / med(theirs[w]):.2f})")
    best = max(med(v) for v in theirs.values())
    print(f"medians of {args.repeats} interleaved repeats")
    print(f"speedup: {med(ours) / best:.2f}")

if __name__ == "__main__":
    main()

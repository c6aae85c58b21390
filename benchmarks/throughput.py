#!/usr/bin/env python
"""Images/s of our on-device loader against a plain torchvision DataLoader + PIL pipeline, in one run.

Both produce the same thing: random crop (pad 4) + horizontal flip + normalisation, batches of
--batch-size. Measured twice: the loader alone, and end to end feeding the same network (forward,
backward, SGD step). Prints a table and the ratios.

    python benchmarks/throughput.py --data-dir ../shared/data
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifarkit import models, runtime, split  # noqa: E402
from cifarkit.augment import RECIPES  # noqa: E402
from cifarkit.errors import cli  # noqa: E402
from cifarkit.loader import DeviceLoader, Normalize, channel_stats  # noqa: E402


class PILDataset(torch.utils.data.Dataset):
    """The textbook pipeline: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels, mean, std):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.t = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.t(Image.fromarray(self.images[i])), int(self.labels[i])


def timed(batches, device, limit, step=None):
    """Images/s over `limit` images (after 2 warm-up batches), optionally running `step` on each batch."""
    seen, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if step:
            step(x, y)
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        elif t0 is not None:
            seen += len(y)
        if seen >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/ (or its .tar.gz)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--model", default="fast_cnn", help="the network fed end to end")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=20_000, help="images timed per loader-alone measurement")
    p.add_argument("--train-images", type=int, default=5_000, help="images timed per end-to-end measurement")
    a = p.parse_args()
    device = runtime.pick_device(a.device)
    s = split.load(split.ensure("cifar10", a.data_dir), ("train",))
    images, labels = s["train_images"], s["train_labels"]
    mean, std = channel_stats(images)
    cl = True
    norm = Normalize(mean, std, device, channels_last=cl)

    def ours():
        return DeviceLoader(images, labels, a.batch_size, norm, device, RECIPES["crop_flip"], shuffle=True, drop_last=True)

    def pil(workers):
        return torch.utils.data.DataLoader(PILDataset(images, labels, mean, std), batch_size=a.batch_size, shuffle=True,
                                           drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                                           persistent_workers=False)

    model = models.create(a.model, 10).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = runtime.amp_dtype(device)

    def step(x, y):
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = []
    for name, make in (("ours: on-device batched ops", ours), ("DataLoader + PIL, 0 workers", lambda: pil(0)),
                       ("DataLoader + PIL, 2 workers", lambda: pil(2))):
        alone = timed(make(), device, a.images)
        e2e = timed(make(), device, a.train_images, step)
        rows.append((name, alone, e2e))
        print(f"  measured {name}: {alone:,.0f} img/s alone, {e2e:,.0f} img/s end to end", flush=True)

    print(f"\nthroughput on {device} ({torch.get_num_threads()} threads), batch {a.batch_size}, "
          f"end to end = {a.model} forward+backward+step{' with ' + str(amp).replace('torch.', '') + ' autocast' if amp else ''}:")
    print(f"  {'loader':32s} {'alone img/s':>12s} {'end-to-end img/s':>17s}")
    for name, alone, e2e in rows:
        print(f"  {name:32s} {alone:12,.0f} {e2e:17,.0f}")
    ours_row = rows[0]
    for name, alone, e2e in rows[1:]:
        print(f"  ratio ours / {name}: loader alone {ours_row[1] / alone:.1f}x, end to end {ours_row[2] / e2e:.2f}x")


if __name__ == "__main__":
    main()

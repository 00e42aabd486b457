"""The shortcut check: can a data set's classes be told from one frame, or only from motion?

A motion benchmark is only a motion benchmark when appearance does not name the class. This
check trains small 2D classifiers of one architecture and tests them:

- **frame, unseen groups**: one frame per clip (the middle one), so it sees appearance and
  position only; trained on the train split, tested on the test split;
- **frame, seen groups**: the same, trained on half of the train split's videos and tested on
  the other half (every second video of each class), so it meets the looks it trained on. This
  is where MotionShapes version 1 failed: inside its training split a look belonged to exactly
  one class, and a network memorised looks instead of learning motion, although on the
  group-disjoint test split it was at chance;
- **motion**: the clip's ``frames - 1`` consecutive frame differences, stacked on the channel
  axis, so it sees change over time (and its order) and almost nothing of a still appearance;
  train split to test split.

On a data set without an appearance shortcut both frame classifiers are at chance (their 95%
bootstrap intervals reach down to 1 / classes) while the motion classifier is far above it (at
least ``motion_factor`` times chance).

Everything is deterministic: fixed clips (``uniform`` positions, no augmentation), seeded
initialisation and batch order. ``vsbench data shortcuts DATA`` runs it from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.uncertainty import bootstrap_interval
from core.data.datasets import VideoDataset, open_dataset
from core.data.loader import make_loader
from core.data.request import LoadRequest


@dataclass(frozen=True)
class ShortcutConfig:
    """What the two classifiers see and how long they train."""

    split: int = 1
    frames: int = 8
    stride: int = 2
    clips: int = 4  # uniformly spaced clips per video (each is one training / test sample)
    size: tuple[int, int] = (32, 32)  # (H, W) frames are decoded at
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    motion_factor: float = 2.5  # "far above chance": motion top-1 >= motion_factor / classes


@dataclass(frozen=True)
class ShortcutReport:
    """Test top-1 (with 95% bootstrap intervals over test videos) of both classifiers."""

    classes: int
    frame_top1: float
    frame_interval: tuple[float, float]
    frame_seen_top1: float
    frame_seen_interval: tuple[float, float]
    motion_top1: float
    motion_interval: tuple[float, float]
    motion_factor: float

    @property
    def chance(self) -> float:
        return 1.0 / self.classes

    @property
    def appearance_shortcut(self) -> bool:
        """A frame classifier (unseen or seen groups) is significantly above chance."""
        return max(self.frame_interval[0], self.frame_seen_interval[0]) > self.chance

    @property
    def motion_learnable(self) -> bool:
        return self.motion_top1 >= self.motion_factor * self.chance

    @property
    def passed(self) -> bool:
        return not self.appearance_shortcut and self.motion_learnable

    def render(self) -> str:
        def line(name: str, top1: float, interval: tuple[float, float]) -> str:
            return f"  {name:<28} {100 * top1:5.1f}%  [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

        verdict = "no appearance shortcut, motion is learnable" if self.passed else "; ".join(
            ([f"APPEARANCE SHORTCUT: one frame predicts the class above chance ({100 * self.chance:.1f}%)"]
             if self.appearance_shortcut else [])
            + ([f"MOTION NOT LEARNABLE: frame differences stay below {self.motion_factor:g}x chance"]
               if not self.motion_learnable else []))
        return "\n".join([f"Shortcut check: test top-1 of three small classifiers ({self.classes} classes, chance "
                          f"{100 * self.chance:.1f}%; 95% bootstrap intervals over test videos)",
                          line("one frame, unseen groups:", self.frame_top1, self.frame_interval),
                          line("one frame, seen groups:", self.frame_seen_top1, self.frame_seen_interval),
                          line("frame differences (motion):", self.motion_top1, self.motion_interval),
                          f"verdict: {verdict}"])


class SmallConvNet(nn.Module):
    """Three conv-BN-ReLU stages, global average pooling and a linear classifier."""

    def __init__(self, in_channels: int, classes: int, width: int = 32):
        super().__init__()
        layers, channels = [], in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def load_clips(videos: VideoDataset, config: ShortcutConfig, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Every video's ``clips`` uniform clips, in the data set's order: float (N, clips, T, 3, H, W)
    in [0, 1], labels (N,)."""
    request = LoadRequest(frames=config.frames, stride=config.stride, clips=config.clips, mode="uniform", decode_size=config.size)
    loader = make_loader(videos, request, config.batch_size, train=False, workers=workers)
    clips, labels, order = [], [], []
    for batch in loader:
        clips.append(batch["rgb"].permute(0, 1, 2, 5, 3, 4).float().div_(255.0))
        labels.append(batch["label"])
        order.append(batch["index"])
    position = torch.cat(order).argsort()  # back to the data set's order
    return torch.cat(clips)[position], torch.cat(labels)[position]


def frame_input(clips: torch.Tensor) -> torch.Tensor:
    """(N, clips, T, 3, H, W) -> the middle frame of every clip, (N, clips, 3, H, W)."""
    return clips[:, :, clips.shape[2] // 2]


def motion_input(clips: torch.Tensor) -> torch.Tensor:
    """(N, clips, T, 3, H, W) -> consecutive frame differences stacked, (N, clips, 3 (T - 1), H, W)."""
    return (clips[:, :, 1:] - clips[:, :, :-1]).flatten(2, 3)


def train_and_test(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, classes: int,
                   config: ShortcutConfig) -> tuple[float, tuple[float, float]]:
    """Train a SmallConvNet on (N, clips, C, H, W) inputs; return the video-level test top-1 and
    its interval (softmax averaged over a video's clips)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = SmallConvNet(x_train.shape[2], classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    samples = x_train.flatten(0, 1)
    targets = y_train.repeat_interleave(x_train.shape[1])
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(samples), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples; at most one sample per epoch waits for the next
                continue
            loss = F.cross_entropy(model(samples[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        probs = torch.cat([model(x_test[i:i + 64].flatten(0, 1)).softmax(1).unflatten(0, (-1, x_test.shape[1])).mean(1)
                           for i in range(0, len(x_test), 64)])
    hits = (probs.argmax(1) == y_test).float()
    return float(hits.mean()), bootstrap_interval(hits)


def shortcut_check(path: str, *, format: str = "auto", config: ShortcutConfig = ShortcutConfig(), workers: int = 2) -> ShortcutReport:
    """Run both classifiers on the data set at ``path`` (train split -> test split)."""
    train = open_dataset(path, format=format, split=config.split, subset="train", progress=False)
    test = open_dataset(path, format=format, split=config.split, subset="test", progress=False)
    classes = len(train.classes)
    if classes < 2:
        raise ValueError(f"{path}: the shortcut check needs a labelled data set with 2 or more classes")
    clips_train, y_train = load_clips(train, config, workers)
    clips_test, y_test = load_clips(test, config, workers)
    frame = train_and_test(frame_input(clips_train), y_train, frame_input(clips_test), y_test, classes, config)
    seen = frame_seen_groups(train, clips_train, y_train, config)
    motion = train_and_test(motion_input(clips_train), y_train, motion_input(clips_test), y_test, classes, config)
    return ShortcutReport(classes, frame[0], frame[1], seen[0], seen[1], motion[0], motion[1], config.motion_factor)


def frame_seen_groups(train: VideoDataset, clips: torch.Tensor, labels: torch.Tensor, config: ShortcutConfig) -> tuple[float, tuple[float, float]]:
    """Top-1 (and its 95% interval) of the single-frame classifier trained on the even-ranked videos
    of each class in the train split and tested on the odd-ranked ones: the same groups and looks
    on both sides, so a look that names its class inside the train split is caught here."""
    even = torch.tensor([k % 2 == 0 for k in _class_ranks(train)])
    return train_and_test(frame_input(clips[even]), labels[even], frame_input(clips[~even]), labels[~even], len(train.classes), config)


def _class_ranks(videos: VideoDataset) -> list[int]:
    """Each video's position among the videos of its class, in list order: even ranks form one
    half of the train split and odd ranks the other, both with the same groups and looks."""
    seen: dict[int, int] = {}
    ranks = []
    for record in videos.records:
        ranks.append(seen.get(record.label, 0))
        seen[record.label] = ranks[-1] + 1
    return ranks

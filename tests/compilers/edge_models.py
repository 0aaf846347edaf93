"""Edge models beyond CNNs for the native backend's tests and benchmarks, built here from public
architectures (no downloads), with the inputs each one takes:

- "ds-cnn": the depthwise-separable keyword-spotting CNN of Zhang et al., "Hello Edge: Keyword Spotting on
  Microcontrollers" (2017), DS-CNN-S: a 10x4 stride-2 conv, four depthwise 3x3 + pointwise blocks (BatchNorm,
  ReLU), average pool, 12 classes; on MFCC-like features (49 frames x 10 coefficients: the DCT of the
  log spectrum of 40 ms frames, 20 ms hop, of one-second 16 kHz synthetic tone-and-noise clips).
- "autoencoder": a dense autoencoder 64-32-8-32-64 (ReLU, sigmoid output) on scikit-learn's 8x8 digits,
  trained for a few epochs to reconstruct them.
- "transformer": a small pre-LayerNorm transformer encoder (BERT-style: token and position embeddings,
  2 layers, 4 heads of 16, exact-erf Gelu, the attention mask applied by masked_fill, masked mean pooling,
  4 classes) on token ids and an attention mask of a fixed sequence length (32, fixed by the schema).
- "m5": the M5 raw-waveform CNN of Dai et al., "Very Deep Convolutional Neural Networks for Raw
  Waveforms" (2017): Conv1d 80/4, then three Conv1d 3 blocks with BatchNorm, ReLU and MaxPool1d 4, mean
  over time, 10 classes; on 8000-sample (1 s at 8 kHz) synthetic clips.
- "crnn": a convolutional recurrent keyword spotter after Arik et al., "Convolutional Recurrent Neural
  Networks for Small-Footprint Keyword Spotting" (2017): two Conv2d (BatchNorm, ReLU) over the MFCC-like
  features of "ds-cnn", the frames as a sequence, a bidirectional GRU (32 per direction, exported with
  linear_before_reset=1), the last step's output to 12 classes.
- "crnn-lstm": the same front end with a one-direction LSTM of 64 instead of the GRU.

Weights are random (seeded) except the autoencoder's; BatchNorm statistics are made non-trivial."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.compilers.edge_cnns import randomize_batch_norm

SEQ, VOCAB = 32, 1000


def ds_block(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())


class DSCNN(nn.Module):
    def __init__(self, classes: int = 12, channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, (10, 4), (2, 2), (5, 1), bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[ds_block(channels) for _ in range(4)])
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))  # the global average pool


class Autoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32),
                                 nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(h)).split(h.shape[-1], dim=-1)
        q, k, v = (t.reshape(-1, SEQ, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5
        attention = torch.softmax(scores.masked_fill(pad, -1e4), dim=-1)
        context = (attention @ v).transpose(1, 2).reshape(-1, SEQ, h.shape[-1])
        h = h + self.out(context)
        return h + self.ff(self.norm2(h))


class TinyEncoder(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim)
        self.positions = nn.Parameter(torch.randn(1, SEQ, dim) * 0.1)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(input_ids) + self.positions
        pad = (attention_mask == 0)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, pad)
        h = self.norm(h)
        weights = attention_mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * weights).sum(1) / weights.sum(1).clamp(min=1.0))


class M5(nn.Module):
    def __init__(self, classes: int = 10, channels: int = 32) -> None:
        super().__init__()
        def block(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, kernel, stride), nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(4)]
        self.features = nn.Sequential(*block(1, channels, 80, 4), *block(channels, channels, 3),
                                      *block(channels, 2 * channels, 3), *block(2 * channels, 2 * channels, 3))
        self.fc = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(-1))


class CRNN(nn.Module):
    def __init__(self, cell: str = "gru", classes: int = 12, channels: int = 32) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv2d(1, channels, (5, 3), (2, 1), (2, 1), bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, (1, 2), 1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU())
        features = channels * 5  # 10 coefficients, halved
        if cell == "gru":
            self.rnn: nn.Module = nn.GRU(features, 32, batch_first=True, bidirectional=True)
        else:
            self.rnn = nn.LSTM(features, 64, batch_first=True)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.front(x).permute(0, 2, 1, 3).flatten(2)  # (N, 25 frames, channels * 5)
        out, _ = self.rnn(frames)
        return self.fc(out[:, -1])


def _randomize_bn_1d(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def _tones(rng: np.random.Generator, count: int, samples: int, rate: int) -> np.ndarray:
    """One-second clips: two random tones (100-3000 Hz) with harmonics, an envelope, and noise."""
    t = np.arange(samples) / rate
    clips = np.empty((count, samples), np.float32)
    for i in range(count):
        f1, f2 = rng.uniform(100, 3000, 2)
        envelope = np.exp(-((t - rng.uniform(0.2, 0.8)) ** 2) / rng.uniform(0.01, 0.1))
        wave = np.sin(2 * np.pi * f1 * t) + 0.5 * np.sin(2 * np.pi * f2 * t) + 0.3 * np.sin(4 * np.pi * f1 * t)
        clips[i] = envelope * wave * rng.uniform(0.1, 1.0) + rng.normal(0, 0.05, samples)
    return clips


def mfcc_like(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 1, 49, 10): DCT-II of the log magnitude spectrum of 40 ms frames, 20 ms hop, at 16 kHz."""
    from scipy.fft import dct

    clips = _tones(rng, count, 16000, 16000)
    frames = np.lib.stride_tricks.sliding_window_view(clips, 640, axis=1)[:, ::320][:, :49] * np.hanning(640)
    spectrum = np.log(np.abs(np.fft.rfft(frames, axis=-1)) + 1e-6)
    return dct(spectrum, type=2, axis=-1, norm="ortho")[..., :10][:, None].astype(np.float32)


def waveforms(rng: np.random.Generator, count: int) -> np.ndarray:
    return _tones(rng, count, 8000, 8000)[:, None]


def token_batch(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Random token ids with a padded tail of random length (id 0, mask 0) per row."""
    ids = rng.integers(1, VOCAB, (count, SEQ), dtype=np.int64)
    lengths = rng.integers(4, SEQ + 1, count)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def digit_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


def train_autoencoder(model: Autoencoder, rows: np.ndarray, epochs: int = 30) -> Autoencoder:
    data = torch.from_numpy(rows)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(data), 64):
            batch = data[start:start + 64]
            optimizer.zero_grad()
            nn.functional.mse_loss(model(batch), batch).backward()
            optimizer.step()
    return model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """A model by name ("ds-cnn", "autoencoder", "transformer", "m5", "crnn", "crnn-lstm"), seeded, eval mode."""
    torch.manual_seed(seed)
    if name == "autoencoder":
        return train_autoencoder(Autoencoder(), digit_rows())
    model = {"ds-cnn": DSCNN, "transformer": TinyEncoder, "m5": M5, "crnn": CRNN,
             "crnn-lstm": lambda: CRNN("lstm")}[name]()
    return _randomize_bn_1d(randomize_batch_norm(model, seed), seed).eval()


def inputs(name: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """count input rows for the model, by input name."""
    rng = np.random.default_rng(seed)
    if name in ("ds-cnn", "crnn", "crnn-lstm"):
        return {"features": mfcc_like(rng, count)}
    if name == "autoencoder":
        rows = digit_rows()
        return {"pixels": rows[rng.permutation(len(rows))[:count]]}
    if name == "transformer":
        return token_batch(rng, count)
    return {"waveform": waveforms(rng, count)}


OUTPUTS = {"autoencoder": "reconstruction"}
TASKS = {"autoencoder": "other"}

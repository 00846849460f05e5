"""Audio encoder: a log-mel crop -> an audio embedding, the content input of every recommender.

    log-mel chunk (n_mels x chunk_frames, ~3 s) -> standardise per band
        -> 5 x [conv 3x3 -> batch norm -> ReLU -> max-pool 2x2] -> max over frequency and time
        -> Linear -> embedding (dim)
    track embedding = normalise(mean of the embeddings of its chunks, end to end over the crop)

Why a short-chunk CNN: Won et al. (2020, "Evaluation of CNN-based automatic music tagging
models") compared the common tagging architectures on three data sets and found this simplest
one (3x3 convolutions over ~3.7 s chunks, max-pooled, chunk predictions averaged over the track)
at or near the top of every comparison, and it is the cheapest to train and run on CPU workers.
Longer-context and attention models did not pay for their cost there, nor would they here, where
one embedding per track is computed for millions of tracks every night.

Three objectives, each used when the catalog has what it needs (a zero weight turns one off):

    contrastive   two random chunks of the same track close, the other tracks' far (NT-Xent,
                  SimCLR): needs neither labels nor a log, so every catalog has it
    co-listening  the embedding predicts the track's collaborative vector (a factorisation of
                  which tracks are played near each other in the log), as van den Oord et al.
                  (2013) regress latent factors from audio: tracks nobody has played then land
                  where the listeners of similar-sounding tracks are
    supervised    one classification head per label column of the catalog (genre, mood, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AudioEncoderConfig:
    n_mels: int = 128
    chunk_frames: int = 128  # ~3 s at 22050 Hz / hop 512, the short chunk of Won et al.
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64, 128])  # one pooled block each
    dim: int = 128
    dropout: float = 0.2
    contrastive_weight: float = 1.0
    colistening_weight: float = 1.0
    supervised_weight: float = 1.0
    temperature: float = 0.1  # of the contrastive softmax
    collab_dim: int = 0  # size of the co-listening targets; set from the data, 0 = no log
    label_classes: list[int] = field(default_factory=list)  # classes per label column; set from the data


# Hyperparameter search (``musicray tune --model audio``), as in lstm_recommender.py.
SEARCH_SPACE = {
    "model": {
        "dim": ("choice", [64, 128]),
        "dropout": ("uniform", 0.0, 0.4),
        "temperature": ("loguniform", 0.05, 0.3),
        "colistening_weight": ("loguniform", 0.3, 3.0),
        "supervised_weight": ("loguniform", 0.3, 3.0),
    },
    "train": {
        "lr": ("loguniform", 3e-4, 3e-3),
        "batch_size": ("choice", [16, 32, 64]),
        "weight_decay": ("loguniform", 1e-6, 1e-3),
    },
}


class AudioEncoder(nn.Module):
    Config = AudioEncoderConfig

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = c = config
        # Per-band statistics of the training crops (dB); they travel with the weights.
        self.register_buffer("mel_mean", torch.zeros(c.n_mels))
        self.register_buffer("mel_std", torch.ones(c.n_mels))
        blocks, width = [], 1
        for channels in c.channels:
            blocks += [nn.Conv2d(width, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = channels
        self.cnn = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(width, c.dim))
        self.projection = nn.Sequential(nn.Linear(c.dim, c.dim), nn.ReLU(), nn.Linear(c.dim, c.dim))  # contrastive only
        self.colistening = nn.Linear(c.dim, c.collab_dim) if c.collab_dim else None
        self.label_heads = nn.ModuleList(nn.Linear(c.dim, n) for n in c.label_classes)

    def fit_statistics(self, logmel: torch.Tensor) -> None:
        """Set the per-band standardisation from training log-mels (tracks, n_mels, frames)."""
        frames = logmel.transpose(0, 1).reshape(self.config.n_mels, -1).float()
        self.mel_mean.copy_(frames.mean(dim=1))
        self.mel_std.copy_(frames.std(dim=1).clamp(min=1e-3))

    def chunk_embeddings(self, chunks: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, chunk_frames) log-mel chunks (dB) -> (B, dim) embeddings, not normalised."""
        x = (chunks.float() - self.mel_mean[:, None]) / self.mel_std[:, None]
        x = self.cnn(x.unsqueeze(1))  # (B, C, mels / 32, frames / 32)
        return self.embed(x.amax(dim=(2, 3)))

    @torch.no_grad()
    def track_embeddings(self, logmel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) stored crops with ``lengths`` real frames each -> (B, dim) unit vectors.

        Each track is cut into consecutive chunks over its real frames; a crop shorter than one
        chunk is repeated to fill it (silence stays silence: its embedding is that of silence).
        """
        chunks, owners = track_chunks(logmel, lengths, self.config.chunk_frames)
        embeddings = self.chunk_embeddings(chunks)
        mean = torch.zeros(len(logmel), embeddings.shape[1], device=embeddings.device).index_add_(0, owners, embeddings)
        return F.normalize(mean, dim=-1)


def track_chunks(logmel: torch.Tensor, lengths: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every track's consecutive ``chunk_frames`` windows over its real frames, and whose each is."""
    chunks, owners = [], []
    for i, (crop, length) in enumerate(zip(logmel, lengths.tolist())):
        real = fill_to(crop[:, : max(int(length), 1)], chunk_frames)
        n = real.shape[1] // chunk_frames
        chunks.append(real[:, : n * chunk_frames].reshape(real.shape[0], n, chunk_frames).transpose(0, 1))
        owners += [i] * n
    return torch.cat(chunks), torch.tensor(owners, device=logmel.device)


def fill_to(frames: torch.Tensor, n: int) -> torch.Tensor:
    """``frames`` (n_mels, T) repeated along time until it holds at least ``n`` frames."""
    if frames.shape[1] >= n:
        return frames
    return frames.repeat(1, -(-n // frames.shape[1]))


class AudioObjective(nn.Module):
    """The encoder's training loss, as one module for DistributedDataParallel to wrap."""

    def __init__(self, model: AudioEncoder):
        super().__init__()
        self.model = model

    def forward(self, first: torch.Tensor, second: torch.Tensor, collab: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """``first``, ``second`` (B, n_mels, chunk_frames): two random chunks of each of B tracks;
        ``collab`` (B, collab_dim) each track's co-listening target (all zero: none);
        ``labels`` (B, label columns) class index per column, -1 where the track has none."""
        return sum(self.losses(first, second, collab, labels).values())

    def losses(self, first, second, collab, labels) -> dict[str, torch.Tensor]:
        model, c = self.model, self.model.config
        z1, z2 = model.chunk_embeddings(first), model.chunk_embeddings(second)
        losses = {}
        if c.contrastive_weight and len(first) > 1:
            losses["contrastive"] = c.contrastive_weight * nt_xent(model.projection(z1), model.projection(z2),
                                                                    c.temperature)
        if model.colistening is not None and c.colistening_weight:
            has = collab.abs().sum(-1) > 0
            if has.any():
                both = torch.cat([model.colistening(z1[has]), model.colistening(z2[has])])
                target = torch.cat([collab[has], collab[has]])
                losses["colistening"] = c.colistening_weight * (1 - F.cosine_similarity(both, target, dim=-1)).mean()
        for column, head in enumerate(model.label_heads):
            known = labels[:, column] >= 0
            if c.supervised_weight and known.any():
                logits = torch.cat([head(z1[known]), head(z2[known])])
                target = torch.cat([labels[known, column], labels[known, column]])
                losses[f"label_{column}"] = c.supervised_weight * F.cross_entropy(logits, target)
        # Keep every parameter in the graph (DDP requires it) even when a batch lacks some targets.
        unused = sum(p.sum() * 0.0 for p in model.parameters())
        losses["contrastive"] = losses.get("contrastive", 0.0) + unused
        return losses


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each of 2B views must pick its pair among the other 2B - 1."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    pairs = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, pairs)

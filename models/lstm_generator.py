"""LSTM music generator: continues a log-mel spectrogram, one frame token at a time.

    log-mel frame (128 dB) --standardise, nearest centroid--> token in [0, K)
    tokens + seed's sound + style label --embed--> LSTM --linear--> logits over the next frame's token
    sample a token (temperature) --centroid, un-standardise--> log-mel frame --vocoder--> audio

Why tokens rather than regressing frames: a model trained with MSE on continuous frames predicts
the *conditional mean* of the next frame. Where the future is uncertain (which note, which drum
hit, when) that mean is an average of the possibilities: a smeared, quiet, ever-flatter spectrum
that drifts to the catalog's average frame within a second or two of free running. A categorical
distribution over a codebook of real frame shapes keeps the alternatives apart: sampling picks one
of them, so every generated frame is a sharp, plausible spectrum and the sequence keeps moving.
Measured on the demo catalog (31 held-out tracks, 5 s seed, 10 s continuation, Fréchet distance of
per-frame log-mel statistics, ``musicray.generation``; lower is better), the same LSTM trained for
the same 6 CPU-minutes: frame regression (MSE) 14,269, its output frozen into a flat average
spectrum within a second; tokens 5,605. The price is quantisation: a frame becomes the mean of its
cluster, 5.7 dB mean absolute error per bin on held-out frames at K = 512 (bigger K or product
codebooks gain little: 5.4 dB at K = 1024, 4.7 dB with four 32-band codebooks), which flattens
timbres and bounds what the model can reach (see ``codebook-real`` in the evaluation).

The codebook is k-means (k-means++ seeding, Lloyd iterations) on per-band standardised log-mel
frames of the training catalog, fitted once before training (``fit_codebook``, deterministic for
a seed) and kept as buffers, so it travels in ``state_dict.pt`` with the weights.

Two vectors are added to every input step. The *sound* of the music being continued: a linear map
of the mean (standardised) codebook frame of a stretch of it, at generation the seed, in training
another random window of the same track. An LSTM alone forgets its seed after a few seconds and
wanders into another style; this keeps the seed's timbre in view at every step. And an optional
style *label* (the catalog's ``label`` column; vocabulary ``config.labels``); training replaces it
by "no label" (row 0) at random (``label_dropout``), so the model continues with or without one.

Pure PyTorch; ``generate`` is deterministic for a given seed (its own ``torch.Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

PAD = -1  # token value of padding after a short track's last frame; no loss is taken on it


@dataclass
class GeneratorConfig:
    n_mels: int = 128
    codebook_size: int = 512  # K: distinct frame shapes the model can emit
    dim: int = 128  # token, sound and label embedding size
    hidden: int = 384  # LSTM width; one step must stay far below a frame's 11.6 ms on one CPU core
    layers: int = 2
    dropout: float = 0.1
    labels: list[str] = field(default_factory=list)  # style vocabulary; row 0 of the embedding is "none"
    label_dropout: float = 0.25
    # The framing of the log-mel the model speaks (the extractor's), needed to vocode its output.
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512


# Hyperparameter search (``musicray tune --model generator``), as in lstm_recommender.py; training
# settings are GeneratorSettings in ray_jobs/tasks/generator.py. The codebook's size and the
# workspace's framing are not searched: one codebook, fitted once, serves every trial.
SEARCH_SPACE = {
    "model": {
        "dim": ("choice", [64, 128, 256]),
        "hidden": ("choice", [256, 384, 512]),
        "layers": ("choice", [1, 2, 3]),
        "dropout": ("uniform", 0.0, 0.3),
        "label_dropout": ("uniform", 0.1, 0.5),
    },
    "train": {
        "lr": ("loguniform", 5e-4, 5e-3),
        "batch_size": ("choice", [8, 16, 32]),
        "weight_decay": ("loguniform", 1e-6, 1e-3),
    },
}


class LSTMGenerator(nn.Module):
    Config = GeneratorConfig

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        if c.codebook_size < 2 or c.n_mels < 1:
            raise ValueError(f"codebook_size must be >= 2 and n_mels >= 1, got {c.codebook_size}, {c.n_mels}")
        if len(set(c.labels)) != len(c.labels):
            raise ValueError(f"labels must be distinct, got {c.labels}")
        self.token_embedding = nn.Embedding(c.codebook_size, c.dim)
        # Row 0 is "no label" and stays zero. The rows start at zero too: the labels begin as no
        # change to the inputs and grow from there. (At the default N(0, 1) init they are as large
        # as the token embeddings they are added to, which slows early training ~2x.)
        self.label_embedding = nn.Embedding(len(c.labels) + 1, c.dim, padding_idx=0)
        nn.init.zeros_(self.label_embedding.weight)
        self.sound = nn.Linear(c.n_mels, c.dim)  # mean standardised frame -> input offset; zero at first too
        nn.init.zeros_(self.sound.weight)
        nn.init.zeros_(self.sound.bias)
        self.lstm = nn.LSTM(c.dim, c.hidden, c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)
        self.head = nn.Linear(c.hidden, c.codebook_size)
        # Filled by fit_codebook; buffers so they are saved and loaded with the weights.
        self.register_buffer("codebook", torch.zeros(c.codebook_size, c.n_mels))  # standardised centroids
        self.register_buffer("mel_mean", torch.zeros(c.n_mels))
        self.register_buffer("mel_std", torch.ones(c.n_mels))

    # -- tokens <-> frames ------------------------------------------------------------------------

    def tokenize(self, logmel: torch.Tensor) -> torch.Tensor:
        """(..., n_mels, T) log-mel dB -> (..., T) nearest-centroid tokens."""
        if logmel.shape[-2] != self.config.n_mels:
            raise ValueError(f"log-mel has {logmel.shape[-2]} mel bands; the generator was built for "
                             f"{self.config.n_mels}")
        frames = (logmel.transpose(-1, -2).float() - self.mel_mean) / self.mel_std
        return nearest(frames, self.codebook)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., T) tokens -> (..., n_mels, T) log-mel dB (each token's centroid)."""
        return (self.codebook[tokens] * self.mel_std + self.mel_mean).transpose(-1, -2)

    def sound_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens (PAD ignored) -> (B, n_mels) their mean standardised codebook frame."""
        real = (tokens != PAD).unsqueeze(-1).float()
        frames = self.codebook[tokens.clamp(min=0)] * real
        return frames.sum(dim=1) / real.sum(dim=1).clamp(min=1)

    def label_index(self, label: str | None) -> int:
        """Row of ``label`` in the label embedding; None is "no label" (0)."""
        if label is None:
            return 0
        if label not in self.config.labels:
            valid = ", ".join(self.config.labels) if self.config.labels else "none (trained without labels)"
            raise ValueError(f"unknown label {label!r}; valid labels: {valid}")
        return self.config.labels.index(label) + 1

    # -- the sequence model -----------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, sound: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """tokens (B, T), labels (B,) label rows (0 = none), sound (B, n_mels) from ``sound_of``
        -> logits (B, T, K), LSTM state."""
        x = self.token_embedding(tokens)
        if sound is not None:
            x = x + self.sound(sound)[:, None, :]
        if labels is not None:
            if self.training and self.config.label_dropout > 0:
                keep = torch.rand(labels.shape, device=labels.device) >= self.config.label_dropout
                labels = labels * keep
            x = x + self.label_embedding(labels)[:, None, :]
        out, state = self.lstm(x, state)
        return self.head(out), state

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
             sound_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of (B, T) sequences padded with ``PAD``;
        ``sound_tokens`` (B, S) are the stretch of each track whose sound conditions it."""
        inputs, targets = tokens[:, :-1].clamp(min=0), tokens[:, 1:]  # a padded input only precedes a padded target
        sound = None if sound_tokens is None else self.sound_of(sound_tokens)
        logits, _ = self(inputs, labels, sound)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD)

    @torch.no_grad()
    def generate(self, seed_logmel: torch.Tensor, n_frames: int, *, seed: int, temperature: float = 1.0,
                 label: str | None = None) -> torch.Tensor:
        """Continue ``seed_logmel`` (n_mels, T >= 1) by ``n_frames`` frames -> (n_mels, n_frames) dB.

        The same arguments give the same frames: the sampling noise comes from a generator seeded
        with ``seed``. ``temperature`` 0 takes the most likely token at every step.
        """
        if seed_logmel.dim() != 2 or seed_logmel.shape[-1] < 1:
            raise ValueError(f"seed log-mel must be (n_mels, frames >= 1), got shape {tuple(seed_logmel.shape)}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        was_training = self.training
        self.eval()
        device = self.codebook.device
        label_row = self.label_index(label)
        seed_tokens = self.tokenize(seed_logmel.to(device))[None]
        sound = self.sound_of(seed_tokens)
        # The seed in one batched pass; then one step per frame with the same weights (_Stepper).
        logits, (h, c) = self(seed_tokens, torch.tensor([label_row], device=device), sound)
        step = _Stepper(self, label_row, sound[0])
        hidden, cells = list(h[:, 0]), list(c[:, 0])
        # Gumbel-max: argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T), and all
        # the noise is drawn at once from the seeded generator.
        uniform = torch.rand(n_frames, self.config.codebook_size, generator=torch.Generator().manual_seed(seed))
        gumbel = (-torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))).to(device)
        last = logits[0, -1]
        tokens = torch.empty(n_frames, dtype=torch.long, device=device)
        for i in range(n_frames):
            token = last.argmax() if temperature == 0 else (last / temperature + gumbel[i]).argmax()
            tokens[i] = token
            last = step(token, hidden, cells)
        self.train(was_training)
        return self.detokenize(tokens)


class _Stepper:
    """One LSTM step per generated frame, ~7x faster than calling ``nn.LSTM`` on one time step.

    On CPU ``nn.LSTM`` builds a oneDNN RNN primitive per call (~2 ms at batch 1, length 1); this
    does the same arithmetic with one matrix-vector product per layer. Layer 0's input projection
    of every token (plus the label and sound vectors) is precomputed once, so a table row replaces
    a product.
    """

    def __init__(self, model: LSTMGenerator, label_row: int, sound: torch.Tensor):
        lstm = model.lstm
        inputs = model.token_embedding.weight + model.label_embedding.weight[label_row] + model.sound(sound)
        self.first = inputs @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0  # (K, 4H)
        self.weights, self.biases = [lstm.weight_hh_l0], [None]
        for layer in range(1, lstm.num_layers):  # [W_ih W_hh] @ [input; hidden] as one product
            self.weights.append(torch.cat([getattr(lstm, f"weight_ih_l{layer}"),
                                           getattr(lstm, f"weight_hh_l{layer}")], dim=1))
            self.biases.append(getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}"))
        self.head = model.head

    def __call__(self, token: torch.Tensor, hidden: list[torch.Tensor], cells: list[torch.Tensor]) -> torch.Tensor:
        """Advance ``hidden`` and ``cells`` (an (H,) tensor per layer, replaced in the lists) by one
        input token; returns the logits (K,) of the next one."""
        below = None
        for layer, weights in enumerate(self.weights):
            if layer == 0:
                gates = torch.addmv(self.first[token], weights, hidden[0])
            else:
                gates = torch.addmv(self.biases[layer], weights, torch.cat([below, hidden[layer]]))
            i, f, g, o = gates.chunk(4)  # PyTorch's gate order
            cells[layer] = torch.sigmoid(f) * cells[layer] + torch.sigmoid(i) * torch.tanh(g)
            hidden[layer] = below = torch.sigmoid(o) * torch.tanh(cells[layer])
        return torch.addmv(self.head.bias, self.head.weight, below)


class NextTokenObjective(nn.Module):
    """The training loss as a module's forward, so that DDP (which wraps this) syncs its gradients."""

    def __init__(self, model: LSTMGenerator):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                sound_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.loss(tokens, labels, sound_tokens)


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) of every point: (..., D) -> (...)."""
    flat = points.reshape(-1, points.shape[-1])
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 does not change the argmin.
    distances = centroids.square().sum(-1)[None, :] - 2 * flat @ centroids.T
    return distances.argmin(dim=-1).reshape(points.shape[:-1])


def kmeans(points: torch.Tensor, k: int, *, seed: int, iterations: int = 25) -> torch.Tensor:
    """(N, D) -> (k, D) centroids: k-means++ seeding then Lloyd iterations, deterministic for a seed.

    A cluster that empties is re-seeded at the point currently worst served, so all k stay in use.
    """
    if len(points) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(points)}")
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    centroids = torch.empty(k, points.shape[1])
    centroids[0] = points[torch.randint(len(points), (1,), generator=generator)]
    closest = (points - centroids[0]).square().sum(-1)
    for i in range(1, k):  # k-means++: each next seed drawn proportionally to its squared distance
        pick = torch.multinomial(closest.clamp(min=0) + 1e-12, 1, generator=generator)
        centroids[i] = points[pick[0]]
        closest = torch.minimum(closest, (points - centroids[i]).square().sum(-1))
    for _ in range(iterations):
        assignment = nearest(points, centroids)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            error = (points - moved[assignment]).square().sum(-1)
            moved[empty] = points[error.topk(len(empty)).indices]
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids


def fit_codebook(model: LSTMGenerator, frames: torch.Tensor, *, seed: int, iterations: int = 25) -> None:
    """Set the model's standardisation and codebook from (N, n_mels) log-mel frames of the catalog."""
    frames = frames.float()
    mean, std = frames.mean(dim=0), frames.std(dim=0).clamp(min=1e-3)
    centroids = kmeans((frames - mean) / std, model.config.codebook_size, seed=seed, iterations=iterations)
    with torch.no_grad():
        model.mel_mean.copy_(mean)
        model.mel_std.copy_(std)
        model.codebook.copy_(centroids)

"""The model types, pure PyTorch, built by name.

``RECOMMENDERS`` are the four track recommenders (``train --model all`` and evaluation iterate
them); ``GENERATORS`` the music generator, which continues audio rather than ranking tracks;
``ENCODERS`` the audio encoder, whose embeddings are part of every other model's content input.
Recommenders share one interface, so training, evaluation, refresh and serving treat them alike:

    model.track_vectors(content (N, D), ids (N,)) -> (N, dim)      every track, played or not
    model(item_vectors (B, L, dim), mask, next_hours, next_weekdays) -> (B, L, dim) queries
    score = query @ track_vectors.T / model.temperature
    model.auxiliary_loss(content (n, D), ids (n,)) -> scalar     added to the next-track loss in training
"""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from models import audio_encoder, autoencoder, dnn_recommender, lstm_generator, lstm_recommender, rnn_recommender, tagger
from models.audio_encoder import AudioEncoder, AudioEncoderConfig
from models.autoencoder import AutoencoderConfig, AutoencoderRecommender
from models.dnn_recommender import DNNConfig, DNNRecommender
from models.lstm_generator import GeneratorConfig, LSTMGenerator
from models.lstm_recommender import LSTMConfig, LSTMRecommender
from models.rnn_recommender import RNNConfig, RNNRecommender
from models.tagger import Tagger, TaggerConfig

RECOMMENDERS: dict[str, type[nn.Module]] = {
    "lstm": LSTMRecommender,
    "rnn": RNNRecommender,
    "dnn": DNNRecommender,
    "autoencoder": AutoencoderRecommender,
}

GENERATORS: dict[str, type[nn.Module]] = {
    "generator": LSTMGenerator,
}

# The tagger: a track's tags (genre, mood, any label column) from its content vector.
TAGGERS: dict[str, type[nn.Module]] = {
    "tagger": Tagger,
}

ENCODERS: dict[str, type[nn.Module]] = {
    "audio": AudioEncoder,
}

MODELS: dict[str, type[nn.Module]] = {**RECOMMENDERS, **GENERATORS, **ENCODERS, **TAGGERS}

# Each model's hyperparameter search space, defined in its file next to its config dataclass:
# {"model": {config field: (kind, *arguments)}, "train": {training setting: (kind, *arguments)}}.
SEARCH_SPACES: dict[str, dict[str, dict[str, tuple]]] = {
    "lstm": lstm_recommender.SEARCH_SPACE,
    "rnn": rnn_recommender.SEARCH_SPACE,
    "dnn": dnn_recommender.SEARCH_SPACE,
    "autoencoder": autoencoder.SEARCH_SPACE,
    "generator": lstm_generator.SEARCH_SPACE,
    "tagger": tagger.SEARCH_SPACE,
    "audio": audio_encoder.SEARCH_SPACE,
}


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, **config) -> nn.Module:
    """Build a model from its name and config fields; unknown fields are a clear error."""
    cls = model_class(name)
    known = {f.name for f in fields(cls.Config)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {name} config field(s) {unknown}; valid: {sorted(known)}")
    return cls(cls.Config(**config))


__all__ = ["ENCODERS", "GENERATORS", "MODELS", "RECOMMENDERS", "SEARCH_SPACES", "TAGGERS", "build", "model_class", "AudioEncoderConfig", "AutoencoderConfig", "DNNConfig",
           "GeneratorConfig", "LSTMConfig", "RNNConfig", "TaggerConfig"]

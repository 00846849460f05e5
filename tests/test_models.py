"""The models as plain PyTorch: registry, shapes, causality, cold start, learning, files; the tagger's heads."""

import numpy as np
import pytest
import torch

from models import RECOMMENDERS, build
from models.losses import NegativeSampler, NextTrackObjective
from models.modules import fit_standardizers
from models.tagger import TaggerObjective
from musicray.checkpoints import read_model_files, write_model_files
from musicray.tagging import tag_metrics

N_TRACKS, CONTENT_DIM = 40, 12


def make(name, **overrides):
    torch.manual_seed(0)
    model = build(name, content_dim=CONTENT_DIM, n_ids=N_TRACKS, **overrides)
    content = torch.randn(N_TRACKS, CONTENT_DIM)
    fit_standardizers(model, content)
    return model, content, torch.arange(1, N_TRACKS + 1)


def test_registry_names_the_valid_choices():
    with pytest.raises(ValueError, match="valid models: lstm, rnn, dnn, autoencoder"):
        build("transformer")
    with pytest.raises(ValueError, match=r"unknown lstm config field\(s\) \['layerz'\]"):
        build("lstm", layerz=3)
    with pytest.raises(ValueError, match="cell must be one of"):
        build("rnn", cell="lstm")


@pytest.mark.parametrize("name", RECOMMENDERS)
def test_queries_are_causal_and_shaped(name):
    model, content, ids = make(name)
    model.eval()
    vectors = model.track_vectors(content, ids)
    items = torch.randint(0, N_TRACKS, (3, 6))
    hours, weekdays = torch.randint(0, 24, (3, 6)), torch.randint(0, 7, (3, 6))
    queries = model(vectors[items], items >= 0, hours, weekdays)
    assert queries.shape == (3, 6, vectors.shape[1])
    changed = items.clone()
    changed[:, 4] = (changed[:, 4] + 1) % N_TRACKS
    later = model(vectors[changed], changed >= 0, hours, weekdays)
    torch.testing.assert_close(later[:, :4], queries[:, :4])  # the future does not leak into the past
    assert not torch.allclose(later[:, 4], queries[:, 4])


@pytest.mark.parametrize("name", RECOMMENDERS)
def test_cold_tracks_get_distinct_vectors_from_audio(name):
    model, content, _ = make(name)
    model.eval()
    cold = model.track_vectors(content, torch.zeros(N_TRACKS, dtype=torch.long))
    assert torch.isfinite(cold).all()
    assert torch.cdist(cold, cold).fill_diagonal_(1.0).min() > 1e-4  # no two tracks collapse together
    same_audio = model.track_vectors(content[:1].repeat(2, 1), torch.tensor([0, 0]))
    torch.testing.assert_close(same_audio[0], same_audio[1])


def cyclic_sessions(n_sessions=64, length=8):
    """Sessions that walk the catalog in steps of +1: the next track is fully determined."""
    starts = torch.randint(0, N_TRACKS, (n_sessions, 1))
    items = (starts + torch.arange(length)) % N_TRACKS
    return items, torch.randint(0, 24, items.shape), torch.randint(0, 7, items.shape)


@pytest.mark.parametrize("name", RECOMMENDERS)
@pytest.mark.parametrize("sampled", [False, True], ids=["full-softmax", "sampled-softmax"])
def test_learns_a_deterministic_sequence(name, sampled):
    model, content, ids = make(name, id_dropout=0.0)
    objective = NextTrackObjective(model)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-2)
    sampler = NegativeSampler(torch.ones(N_TRACKS), n_negatives=16) if sampled else None
    torch.manual_seed(1)
    items, hours, weekdays = cyclic_sessions()
    losses = []
    for _ in range(100):
        negatives, log_q = sampler.sample(torch.device("cpu")) if sampler else (None, None)
        loss = objective(items, hours, weekdays, content, ids, negatives, log_q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # A sampled softmax's loss is one draw of 16 negatives: single steps spike, so compare the
    # last ten steps' mean with the start.
    assert sum(losses[-10:]) / 10 < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        vectors = model.track_vectors(content, ids)
        history = torch.tensor([[5, 6, 7]])
        query = model(vectors[history], history >= 0, torch.zeros_like(history), torch.zeros_like(history))[0, -1]
        scores = query @ vectors.T
    if name == "autoencoder":  # recommends by similarity to the history, so the history itself is excluded
        scores[history[0]] = float("-inf")
    assert 8 in scores.argsort(descending=True)[:3].tolist()  # the true next track is (near) the top of 40


def test_checkpoint_files_load_with_weights_only(tmp_path):
    model, content, ids = make("lstm")
    write_model_files(str(tmp_path), "lstm", model, [f"t{i}" for i in range(N_TRACKS)], extra={"epoch": 3})
    loaded, vocabulary, meta = read_model_files(str(tmp_path))  # torch.load(weights_only=True) inside
    assert meta["epoch"] == 3 and meta["config"]["n_ids"] == N_TRACKS and vocabulary[0] == "t0"
    model.eval()
    torch.testing.assert_close(loaded.track_vectors(content, ids), model.track_vectors(content, ids))


def tagged_tracks(n: int, seed: int):
    """Content whose first features decide a 4-value genre and three independent instruments."""
    torch.manual_seed(seed)
    content = torch.randn(n, CONTENT_DIM)
    genre = (content[:, 0] > 0).long() + 2 * (content[:, 1] > 0).long()
    instruments = torch.stack([content[:, 2] > 0, content[:, 3] > 0.5, content[:, 2] < -0.5], dim=1).float()
    return content, genre, instruments


TAG_HEADS = [{"column": "genre", "kind": "categorical", "values": ["a", "b", "c", "d"]},
             {"column": "instrument", "kind": "multi-label", "values": ["piano", "drums", "strings"]}]


def test_the_tagger_learns_both_kinds_of_tags_and_ignores_untagged_tracks(tmp_path):
    content, genre, instruments = tagged_tracks(160, seed=0)
    genre[::5] = -1  # every fifth track has no genre, every fourth from the second no instruments
    instruments[1::4] = -1.0
    model = build("tagger", content_dim=CONTENT_DIM, hidden=64, tags=TAG_HEADS)
    fit_standardizers(model, content)
    objective = TaggerObjective(model)
    model.eval()
    untagged = 5  # in neither column: its content changes nothing
    moved = content.clone()
    moved[untagged] += 100.0
    torch.testing.assert_close(objective(moved, genre, instruments), objective(content, genre, instruments))

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = objective(content, genre, instruments)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]

    fresh, fresh_genre, fresh_instruments = tagged_tracks(300, seed=1)  # tracks it never saw
    model.eval()
    genre_probabilities, instrument_probabilities = (p.numpy() for p in model.probabilities(fresh))
    assert np.allclose(genre_probabilities.sum(1), 1.0, atol=1e-5)
    genre_scores = tag_metrics("categorical", fresh_genre.numpy(), genre_probabilities)
    instrument_scores = tag_metrics("multi-label", fresh_instruments.numpy(), instrument_probabilities)
    assert genre_scores["accuracy"] > 0.8 and genre_scores["macro_F1"] > 0.8 and genre_scores["ROC_AUC"] > 0.9
    assert instrument_scores["macro_F1"] > 0.8 and instrument_scores["ROC_AUC"] > 0.9  # chance: ~0.5

    write_model_files(str(tmp_path), "tagger", model, [])
    loaded, _, meta = read_model_files(str(tmp_path))
    assert meta["config"]["tags"] == TAG_HEADS
    torch.testing.assert_close(loaded.probabilities(fresh)[1], model.probabilities(fresh)[1])


def test_a_tagger_config_names_what_is_wrong():
    with pytest.raises(ValueError, match="at least one tag column"):
        build("tagger", tags=[])
    with pytest.raises(ValueError, match="kind must be one of"):
        build("tagger", tags=[{"column": "mood", "kind": "ordinal", "values": ["calm", "lively"]}])
    with pytest.raises(ValueError, match="'mood' has 1 value"):
        build("tagger", tags=[{"column": "mood", "kind": "categorical", "values": ["calm"]}])

"""The audio encoder: the model in plain PyTorch, its training run, and the embeddings every track gets."""

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models import build
from models.audio_encoder import AudioObjective
from musicray import storage
from musicray import workspace as layout
from musicray.audio_embeddings import EmbeddingLookup, latest_audio_run, read_embeddings
from musicray.checkpoints import load_trained
from musicray.content import TrackCatalog
from musicray.metrics import label_precision_at_k
from musicray.schemas import read_features
from ray_jobs.extract import run_extract
from ray_jobs.tasks.audio import AudioSettings
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.train import run_train

N_MELS = 32


def tiny_encoder(**overrides):
    torch.manual_seed(0)
    return build("audio", n_mels=N_MELS, chunk_frames=32, channels=[8, 16], dim=16, **overrides)


def test_embeddings_are_unit_vectors_even_for_short_and_silent_crops():
    encoder = tiny_encoder().eval()
    logmel = torch.randn(3, N_MELS, 100) * 10 - 40
    logmel[2] = -80.0  # silence: the log-mel floor everywhere
    lengths = torch.tensor([100, 7, 100])  # the second crop is shorter than one 32-frame chunk
    vectors = encoder.track_embeddings(logmel, lengths)
    assert vectors.shape == (3, 16) and torch.isfinite(vectors).all()
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    # Frames past a crop's length are padding and change nothing.
    padded = logmel.clone()
    padded[1, :, 7:] = 123.0
    assert torch.allclose(encoder.track_embeddings(padded, lengths), vectors, atol=1e-6)


def test_the_contrastive_objective_learns_to_pair_chunks_of_the_same_track():
    torch.manual_seed(0)
    encoder = tiny_encoder(collab_dim=0, label_classes=[]).train()
    # 16 "tracks", each a different spectral shape plus noise; chunks of a track share the shape.
    shapes = torch.randn(16, N_MELS, 1) * 8

    def chunks():
        return shapes + torch.randn(16, N_MELS, 32) * 4, shapes + torch.randn(16, N_MELS, 32) * 4

    objective = AudioObjective(encoder)
    empty_collab, no_labels = torch.zeros(16, 0), torch.zeros(16, 0, dtype=torch.long)
    before = objective(*chunks(), empty_collab, no_labels).item()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    for _ in range(60):
        loss = objective(*chunks(), empty_collab, no_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    first, second = chunks()
    a = torch.nn.functional.normalize(encoder.chunk_embeddings(first), dim=1)
    b = torch.nn.functional.normalize(encoder.chunk_embeddings(second), dim=1)
    matched = ((a @ b.T).argmax(dim=1) == torch.arange(16)).float().mean().item()
    assert objective(first, second, empty_collab, no_labels).item() < 0.75 * before
    assert matched > 0.8  # chance: 1/16


@pytest.fixture(scope="module")
def encoded(demo, extracted, tmp_path_factory):
    """The demo workspace with an audio encoder trained on it (run "enc"), and the run's result."""
    root = tmp_path_factory.mktemp("encoded") / "ws"
    shutil.copytree(extracted, root)
    settings = AudioSettings(epochs=3, batch_size=16, max_failures=0)
    return root, run_train("audio", str(root), str(demo.sessions_train), settings=settings, run_id="enc")


@pytest.fixture
def encoded_root(encoded, tmp_path) -> str:
    root = tmp_path / "ws"
    shutil.copytree(encoded[0], root)
    return str(root)


def test_training_embeds_every_track_and_recommenders_read_the_embeddings(demo, encoded, encoded_root):
    root, result = encoded_root, encoded[1]
    history = [h["val_loss"] for h in result.history]
    assert history[-1] < history[0]  # it learned
    assert latest_audio_run(root) == "enc"

    features = read_features(root, columns=["track_id", "extracted_at"])
    vectors = EmbeddingLookup(root, "enc").rows(features)  # every current feature row is embedded
    assert vectors.shape == (features.num_rows, load_trained(root, "audio").model.config.dim)
    labels = pd.read_parquet(demo.manifest).set_index("track_id").loc[features.column("track_id").to_pylist(), "label"]
    # The demo's styles are easy: what matters is that the space is far from chance (1/8).
    assert label_precision_at_k(vectors, list(labels), k=3) > 0.6

    catalog = TrackCatalog.from_workspace(root)
    assert catalog.audio_run == "enc" and catalog.content.shape[1] == 316 + vectors.shape[1]
    lstm = run_train("lstm", root, str(demo.sessions_train), run_id="on-audio",
                     settings=RecommenderSettings(epochs=1, batch_size=32, max_failures=0))
    assert lstm.best["val_HR@20"] > 0
    assert load_trained(root, "lstm").audio_run == "enc"

    # Retraining the encoder re-embeds every track under the new run and keeps the old run's
    # embeddings, which the LSTM (trained on them) still reads.
    run_train("audio", root, None, settings=AudioSettings(epochs=1, batch_size=16, max_failures=0), run_id="enc2")
    assert latest_audio_run(root) == "enc2"
    assert read_embeddings(root, "enc2").num_rows == features.num_rows
    assert TrackCatalog.from_workspace(root, audio_run="enc").content.shape == catalog.content.shape


def test_extraction_embeds_only_new_and_changed_tracks(demo, encoded_root, tmp_path):
    root = encoded_root
    before = read_embeddings(root, "enc").num_rows

    catalog = tmp_path / "catalog"
    shutil.copytree(demo.manifest.parent, catalog)
    manifest = pq.read_table(catalog / "catalog.parquet").to_pandas()
    changed = manifest["uri"].iloc[0]
    shutil.copy(catalog / manifest["uri"].iloc[1], catalog / changed)  # one track's audio replaced
    report = run_extract(str(catalog / "catalog.parquet"), root)
    assert (report.done, report.audio_embedded) == (1, 1)
    assert read_embeddings(root, "enc").num_rows == before + 1
    features = read_features(root, columns=["track_id", "extracted_at"])
    EmbeddingLookup(root, "enc").rows(features)  # the changed track's new row is embedded too

    again = run_extract(str(catalog / "catalog.parquet"), root)
    assert (again.done, again.audio_embedded) == (0, 0)


def test_a_catalog_without_labels_or_log_still_trains_on_audio_alone(demo, features_root):
    root = features_root
    table = pq.read_table(pa.BufferReader(storage.read_bytes(layout.catalog_file(root)))).drop_columns(["label"])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(layout.catalog_file(root), sink.getvalue().to_pybytes())
    result = run_train("audio", root, None, settings=AudioSettings(epochs=1, batch_size=16, max_failures=0))
    assert result.info["label_classes"] == 0 and result.info["colistening_tracks"] == 0
    assert set(result.best) >= {"val_loss", "val_contrastive"}
    assert not any(k.startswith("val_label") for k in result.best)


def test_too_few_tracks_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="has 0 track"):
        run_train("audio", str(tmp_path / "empty"), None, settings=AudioSettings(epochs=1))


def test_a_search_over_the_encoder_selects_on_validation_loss(encoded_root):
    from ray_jobs import tune

    outcome = tune.run_tune("audio", encoded_root, None, samples=2, name="enc-search", epochs=1,
                            fixed={"channels": [8, 16], "dim": 16}, publish=False)
    assert outcome.complete and (outcome.metric, outcome.mode) == ("val_loss", "min")
    assert len(outcome.trials) == 2 and outcome.best["value"] > 0
    assert outcome.best["model_config"]["dim"] == 16

"""The music generator: model, codebook, vocoder, Fréchet distance, audio files, Ray Train, the CLI."""

import io
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from models import GENERATORS, RECOMMENDERS, build
from models.lstm_generator import LSTMGenerator, fit_codebook, kmeans
from musicray import cli, storage, workspace
from musicray.features import FeatureConfig, FeatureExtractor
from musicray.generation import held_out_tracks, load_generator
from musicray.splits import split_tracks
from musicray.generation_eval import evaluate_generation, evaluate_workspace, frechet_distance, generation_report
from musicray.schemas import features_schema
from musicray.vocoder import Vocoder
from ray_jobs import evaluate, generate
from ray_jobs.tasks.generator import GeneratorSettings
from ray_jobs.train import run_train
from tests.conftest import tone
from tests.faults import CrashAfterEpoch

SMALL = {"codebook_size": 16, "dim": 16, "hidden": 32, "layers": 1}


def small_model(labels=("low", "high"), seed=0) -> LSTMGenerator:
    torch.manual_seed(seed)
    model = build("generator", **SMALL, labels=list(labels))
    frames = FeatureExtractor()(torch.from_numpy(tone(3.0, freq=330.0)[:, 0])[None])["logmel"][0].T
    fit_codebook(model, frames, seed=0, iterations=5)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The model


def test_registry_keeps_four_recommenders_and_knows_the_generator():
    assert list(RECOMMENDERS) == ["lstm", "rnn", "dnn", "autoencoder"]
    assert list(GENERATORS) == ["generator"]
    with pytest.raises(ValueError, match="valid models: lstm, rnn, dnn, autoencoder, generator"):
        build("transformer")
    with pytest.raises(ValueError, match=r"unknown generator config field\(s\) \['hiden'\]"):
        build("generator", hiden=3)


def test_codebook_recovers_clusters_deterministically():
    rng = np.random.default_rng(0)
    prototypes = rng.normal(-40, 15, (4, 128))
    labels = rng.integers(0, 4, 2000)
    frames = torch.from_numpy(prototypes[labels] + rng.normal(0, 1.0, (2000, 128))).float()
    model = build("generator", codebook_size=4, dim=8, hidden=8, layers=1)
    fit_codebook(model, frames, seed=3)
    tokens = model.tokenize(frames.T)
    # The same partition as the true clusters (token ids are an arbitrary relabelling).
    assert len({(int(t), int(c)) for t, c in zip(tokens, labels)}) == 4
    decoded = model.detokenize(tokens).T
    assert (decoded - torch.from_numpy(prototypes[labels]).float()).abs().mean() < 0.2  # centroids = prototypes
    again = build("generator", codebook_size=4, dim=8, hidden=8, layers=1)
    fit_codebook(again, frames, seed=3)
    torch.testing.assert_close(again.codebook, model.codebook, rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least k=4 points"):
        kmeans(frames[:3], 4, seed=0)


def test_generate_is_shaped_and_seeded():
    model = small_model()
    seed_logmel = FeatureExtractor()(torch.from_numpy(tone(1.0, freq=440.0)[:, 0])[None])["logmel"][0]
    out = model.generate(seed_logmel, 50, seed=7)
    assert out.shape == (128, 50) and torch.isfinite(out).all()
    torch.testing.assert_close(model.generate(seed_logmel, 50, seed=7), out, rtol=0, atol=0)
    assert not torch.equal(model.generate(seed_logmel, 50, seed=8), out)
    with torch.no_grad():  # label and sound vectors start at zero; make them matter, as training does
        model.label_embedding.weight[1:].normal_()
        model.sound.weight.normal_()
    out = model.generate(seed_logmel, 50, seed=7)
    assert not torch.equal(model.generate(seed_logmel, 50, seed=7, label="high"), out)
    greedy = model.generate(seed_logmel, 20, seed=1, temperature=0)
    torch.testing.assert_close(model.generate(seed_logmel, 20, seed=2, temperature=0), greedy, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown label 'jazz'; valid labels: low, high"):
        model.generate(seed_logmel, 5, seed=0, label="jazz")
    with pytest.raises(ValueError, match="mel bands"):
        model.generate(seed_logmel[:64], 5, seed=0)


def test_lstm_learns_a_repeating_pattern():
    torch.manual_seed(0)
    model = build("generator", codebook_size=8, dim=16, hidden=32, layers=1, dropout=0.0)
    pattern = torch.tensor([0, 0, 3, 5, 5, 5, 1, 7])  # a "bar" of frame tokens, repeated
    sequences = torch.stack([pattern.roll(-s).repeat(5) for s in range(8)])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = model.loss(sequences).item()
    for _ in range(150):
        loss = model.loss(sequences)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    model.codebook.copy_(torch.eye(8, 128))  # token i decodes to a frame with band i at 1 dB
    seed_logmel = model.detokenize(pattern.repeat(2))
    continued = model.generate(seed_logmel, 16, seed=0, temperature=0)
    assert model.tokenize(continued).tolist() == pattern.repeat(2).tolist()


# ---------------------------------------------------------------------------------------------
# Vocoder and Fréchet distance (audio files: tests/test_audio.py)


def test_vocoder_round_trip_keeps_the_log_mel():
    extractor, vocoder = FeatureExtractor(), Vocoder()
    for freq in (220.0, 587.0):
        logmel = extractor(torch.from_numpy(tone(3.0, freq=freq)[:, 0])[None])["logmel"][0]
        waveform = vocoder(logmel, seed=0)
        assert waveform.shape == (vocoder.n_samples(logmel.shape[-1]),)
        again = extractor(waveform[None])["logmel"][0]
        audible = logmel > logmel.max() - 60  # the top 60 dB; below that is the floor
        assert (again - logmel).abs()[audible].mean() < 2.0  # dB
        torch.testing.assert_close(vocoder(logmel, seed=0), waveform, rtol=0, atol=0)  # seeded phase


def test_shaped_noise_has_the_target_spectrum():
    extractor, vocoder = FeatureExtractor(), Vocoder()
    logmel = extractor(torch.from_numpy(tone(3.0, freq=330.0)[:, 0])[None])["logmel"][0]
    target = torch.pow(10.0, logmel / 10).mean(dim=-1)
    noise = vocoder.noise(target, 400, seed=0)
    heard = torch.pow(10.0, extractor(noise[None])["logmel"][0] / 10).mean(dim=-1)
    loud = 10 * torch.log10(target) > 10 * torch.log10(target).max() - 40
    error_db = (10 * torch.log10(heard / target)).abs()[loud]
    assert error_db.median() < 1.5


def test_frechet_distance_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (4000, 16)) @ rng.normal(0, 1, (16, 16))
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(real + shift, real) for shift in (0.5, 1.0, 2.0)]
    assert distances == pytest.approx([16 * 0.25, 16 * 1.0, 16 * 4.0], rel=1e-6)  # |mu shift|^2
    wider = frechet_distance(real * 2.0, real)
    assert wider > 1.0 and frechet_distance(real, real * 2.0) == pytest.approx(wider, rel=1e-6)
    with pytest.raises(ValueError, match="differ in size"):
        frechet_distance(real, real[:, :8])


def test_held_out_split_is_stable_under_catalog_growth():
    ids = [f"trk{i:05d}" for i in range(2000)]
    train, held = split_tracks(ids, 0.1)
    assert 150 < len(held) < 250 and not set(train) & set(held) and len(train) + len(held) == 2000
    grown = held_out_tracks(ids + [f"new{i}" for i in range(500)], 0.1)
    assert [t for t in grown if t.startswith("trk")] == held  # old tracks stay on their side
    assert len(held_out_tracks(["a", "b"], 0.1)) == 1  # a tiny catalog still validates on one track


# ---------------------------------------------------------------------------------------------
# Ray Train, evaluation and `musicray generate` on a tiny workspace


CONFIG = FeatureConfig(crop_seconds=4.0)
TRACKS = {f"t{i}": ("low" if i % 2 else "high", 180.0 * 2 ** (i / 5)) for i in range(10)}


def write_workspace(root) -> None:
    """A features table (as the extract job writes it) of synthetic tones, plus a labelled catalog."""
    extractor = FeatureExtractor(CONFIG)
    rows = []
    for i, (track_id, (label, freq)) in enumerate(TRACKS.items()):
        samples = tone(CONFIG.crop_seconds, freq=freq, seed=i)[:, 0]
        features = {k: v[0] for k, v in extractor(torch.from_numpy(samples)[None]).items()}
        rows.append({
            "track_id": track_id, "content_hash": f"sha256:{i}", "uri": f"{track_id}.wav", "sample_rate": 22050,
            "channels": 1, "duration_s": CONFIG.crop_seconds, "crop_frames": CONFIG.n_frames,
            "logmel": features.pop("logmel").numpy().astype(np.float16).ravel(),
            **{k: (v.numpy().astype(np.float32) if v.dim() else float(v)) for k, v in features.items()},
            "extractor_version": CONFIG.version, "extracted_at": datetime.now(timezone.utc),
        })
    schema = features_schema(CONFIG)
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(workspace.features_dir(root), "part-0.parquet"), buffer.getvalue())
    catalog = pa.table({"track_id": list(TRACKS), "uri": [f"{t}.wav" for t in TRACKS],
                        "label": [label for label, _ in TRACKS.values()]})
    buffer = io.BytesIO()
    pq.write_table(catalog, buffer)
    storage.write_bytes(workspace.catalog_file(root), buffer.getvalue())


SETTINGS = GeneratorSettings(epochs=3, batch_size=4, crop_frames=48, max_failures=0, codebook_frames=5000,
                             codebook_iterations=5)


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """A generator trained through a crash: epoch 1 kills the worker, the re-run resumes it."""
    root = str(tmp_path_factory.mktemp("generator") / "ws")
    write_workspace(root)
    with pytest.raises(Exception, match="(?i)fail|died|error"):
        run_train("generator", root, settings=SETTINGS, run_id="gen", model_config=SMALL,
                  hooks=[CrashAfterEpoch(1)])
    published_after_crash = storage.read_pointer(workspace.model_pointer(root, "generator"))
    killed = [json.loads(storage.read_text(f.uri))["history"]
              for f in storage.list_files(f"{root}/models/generator/gen")
              if f.uri.endswith("config.json") and "/checkpoint_" in f.uri]
    result = run_train("generator", root, settings=SETTINGS, run_id="gen", model_config=SMALL)
    return root, result, killed, published_after_crash


def test_training_resumes_after_a_crash_and_publishes_the_best(trained):
    root, result, killed, published_after_crash = trained
    assert published_after_crash is None  # nothing published by the failed run
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[:2] == max(killed, key=len)  # epochs 0 and 1 restored, not trained again
    assert result.best["val_loss"] == min(h["val_loss"] for h in result.history)
    info = result.info
    assert info["labels"] == ["high", "low"] and info["train_tracks"] + info["validation_tracks"] == len(TRACKS)
    assert storage.read_pointer(workspace.model_pointer(root, "generator")) == "gen"
    generator = load_generator(root)
    assert generator.metrics["epoch"] == result.best["epoch"] and generator.model.config.labels == ["high", "low"]
    assert generator.model.codebook.abs().sum() > 0  # the fitted codebook travels in the state_dict


def test_train_command_trains_the_generator_without_a_listening_log(ray_cluster, tmp_path, capsys):
    root = str(tmp_path / "ws")
    write_workspace(root)
    sets = [arg for field, value in SMALL.items() for arg in ("--set", f"{field}={value}")]
    assert cli.main(["train", "--model", "generator", "--root", root, "--epochs", "1", "--batch-size", "4",
                     "--crop-frames", "48", "--run-name", "cli", *sets]) == 0
    assert "generator cli: best epoch 0 of 1" in capsys.readouterr().out
    assert load_generator(root).model.config.hidden == SMALL["hidden"]
    with pytest.raises(SystemExit):  # recommenders do need one
        cli.main(["train", "--model", "lstm", "--root", root])
    assert "--sessions is required to train 'lstm'" in capsys.readouterr().err


def test_evaluation_scores_the_model_against_baselines(trained, tmp_path):
    root, *_ = trained
    generator = load_generator(root)
    held_out = held_out_tracks(list(TRACKS), generator.validation_fraction)
    metrics = evaluate_workspace(root, plot_dir=str(tmp_path), seed_seconds=1.0, continuation_seconds=2.0)
    assert metrics["run_id"] == "gen" and metrics["tracks"] == len(held_out)
    assert set(metrics["frechet"]) == {"generator", "loop-seed (baseline)", "shaped-noise (baseline)",
                                       "vocoded-real (reference)", "codebook-real (reference)"}
    assert all(np.isfinite(v) and v >= 0 for v in metrics["frechet"].values())
    assert metrics["best_baseline"] in ("loop-seed (baseline)", "shaped-noise (baseline)")
    assert (tmp_path / f"generation_{held_out[0]}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| generator |" in "\n".join(generation_report(metrics))
    again = evaluate_generation(generator, root, held_out, seed_seconds=1.0, continuation_seconds=2.0, seed=0)
    assert again["frechet"] == metrics["frechet"]  # seeded end to end
    assert evaluate_workspace(str(tmp_path / "no-generator")) is None


def test_evaluate_command_adds_a_generation_section(trained, tmp_path):
    root, *_ = trained
    plays = [(f"u{u}", f"t{(u + step) % 10}", 1_700_000_000 + 60 * (100 * u + step)) for u in range(6) for step in range(4)]
    log = pd.DataFrame(plays, columns=["user_id", "track_id", "ts"])
    log.iloc[:16].to_parquet(tmp_path / "train.parquet")
    log.iloc[16:].to_parquet(tmp_path / "test.parquet")
    args = ["--root", root, "--sessions-train", str(tmp_path / "train.parquet"), "--sessions-test",
            str(tmp_path / "test.parquet")]
    assert evaluate.main([*args, "--out", str(tmp_path / "short"), "--generation-seed-seconds", "1",
                          "--generation-seconds", "2"]) == 0
    metrics = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert metrics["generation"]["frechet"] == evaluate_workspace(root, seed_seconds=1.0, continuation_seconds=2.0)["frechet"]
    report = (tmp_path / "short" / "report.md").read_text()
    assert "| generator |" in report and "![seed and continuations](generation_" in report
    # The demo defaults (5 s seed + 10 s) do not fit these 4 s tracks: said, and the ranking still stands.
    assert evaluate.main([*args, "--out", str(tmp_path / "long")]) == 0
    metrics = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert "has 15 s of audio for seed + continuation" in metrics["generation"]["not_evaluated"]
    assert "popularity" in metrics["ranking"]


def test_generate_command_writes_reproducible_audio(trained, tmp_path, capsys):
    root, *_ = trained
    base = ["--root", root, "--seed-track", "t3", "--seconds", "2", "--seed", "5"]
    assert generate.main([*base, "--out", str(tmp_path / "a.wav"), "--spectrogram", str(tmp_path / "a.png")]) == 0
    assert generate.main([*base, "--out", str(tmp_path / "b.wav")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    samples, rate = sf.read(tmp_path / "a.wav")
    assert rate == 22050 and abs(len(samples) / rate - 2.0) < 0.05 and np.abs(samples).max() > 0.01
    assert generate.main([*base[:-1], "6", "--out", str(tmp_path / "c.wav")]) == 0
    assert (tmp_path / "c.wav").read_bytes() != (tmp_path / "a.wav").read_bytes()
    seed_file = tmp_path / "seed.flac"
    sf.write(seed_file, tone(2.0, sample_rate=44100, freq=300.0), 44100)
    args = ["--root", root, "--seed-audio", str(seed_file), "--seconds", "1", "--label", "low", "--include-seed"]
    for name in ("d.ogg", "e.ogg"):
        assert generate.main([*args, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "d.ogg").read_bytes() == (tmp_path / "e.ogg").read_bytes()
    assert sf.info(tmp_path / "d.ogg").duration > 2.5  # 2 s seed + 1 s continuation


def test_generate_command_errors_are_one_clear_line(trained, tmp_path, capsys):
    root, *_ = trained
    (tmp_path / "notes.wav").write_text("not audio at all")
    out = str(tmp_path / "x.wav")
    cases = [
        (["--seed-track", "t1", "--seconds", "40", "--out", out], "40 s requested, above the cap of 30 s"),
        (["--seed-track", "t1", "--seconds", "9", "--max-seconds", "5", "--out", out], "above the cap of 5 s"),
        (["--seed-track", "t1", "--seconds", "0", "--out", out], "seconds must be > 0, got 0"),
        (["--seed-track", "nope", "--seconds", "1", "--out", out], "unknown seed track 'nope'"),
        (["--seed-audio", str(tmp_path / "notes.wav"), "--seconds", "1", "--out", out],
         f"seed audio {tmp_path / 'notes.wav'} is not usable audio"),
        (["--seed-audio", str(tmp_path / "absent.wav"), "--seconds", "1", "--out", out],
         f"cannot read seed audio {tmp_path / 'absent.wav'}"),
        (["--seed-track", "t1", "--seconds", "1", "--label", "jazz", "--out", out],
         "unknown label 'jazz'; valid labels: high, low"),
        (["--seed-track", "t1", "--seconds", "1", "--out", str(tmp_path / "x.mp3")],
         f"unsupported audio output '{tmp_path / 'x.mp3'}'"),
    ]
    for args, message in cases:
        assert generate.main(["--root", root, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    empty = str(tmp_path / "empty-ws")
    assert generate.main(["--root", empty, "--seed-track", "t1", "--seconds", "1", "--out", out]) == 2
    assert "run `musicray train --model generator` first" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()

"""Which tracks a model trains on, validates on and is tested on: a stable hash of the track id.

A track's side never depends on the other tracks, so adding tracks to a catalog does not move old
ones, and every model that learns from audio (the audio encoder, the tagger, the generator) holds
out the same tracks: a test track's audio is never seen in training, by any of them.

    held_out_score(t) < 0.1          test        (the generator validates and is evaluated on these)
    0.1 <= held_out_score(t) < 0.2   validation  (the audio encoder and the tagger pick checkpoints on these)
    otherwise                        training
"""

from __future__ import annotations

import hashlib

VALIDATION_FRACTION = 0.1


def held_out_score(track_id: str) -> float:
    """A stable number in [0, 1) per track id: the same on every machine, run and catalog."""
    return int.from_bytes(hashlib.sha1(track_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_tracks(track_ids: list[str], fraction: float = VALIDATION_FRACTION) -> tuple[list[str], list[str]]:
    """(training, held-out) track ids: held out when ``held_out_score < fraction``.

    Only when the hash holds out none of two or more tracks (tiny catalogs) is the one with the
    lowest score held out, so validation always has a track.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    ids = sorted(set(track_ids))
    held = [t for t in ids if held_out_score(t) < fraction]
    if not held and len(ids) >= 2:
        held = [min(ids, key=held_out_score)]
    chosen = set(held)
    return [t for t in ids if t not in chosen], held


def train_validation_test(track_ids: list[str], fraction: float = VALIDATION_FRACTION
                          ) -> tuple[list[str], list[str], list[str]]:
    """(training, validation, test) track ids: test below ``fraction``, validation below twice it.

    The test side is exactly ``split_tracks``'s held-out side. A tiny catalog whose hash leaves the
    validation side empty validates on its lowest-scoring training track.
    """
    rest, test = split_tracks(track_ids, fraction)
    validation = [t for t in rest if held_out_score(t) < 2 * fraction]
    if not validation and len(rest) >= 2:
        validation = [min(rest, key=held_out_score)]
    chosen = set(validation)
    return [t for t in rest if t not in chosen], validation, test

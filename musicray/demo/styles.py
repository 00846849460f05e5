"""The eight style renderers: how each style arranges its parts on a ``_Song`` into a ``_Mix``.

Every track is ``seconds`` long and synthesised with numpy from a random key, a tempo in its
style's range, a mode from the style's modes, a chord progression over that mode and small
per-track timbre variations. ``tempo_bpm`` in the catalog is the true (mean) tempo.

=========  ========  ====================================================================
style      bpm       sound
=========  ========  ====================================================================
ambient    60-80     slow detuned pads, sparse bell tones, a drone, long reverb; no drums
techno     122-132   four-on-the-floor kick, off-beat and 16th hats, claps, rolling saw bass,
                     filtered chord stabs with echo
rock       100-140   kick/backbeat snare/8th hats, crashes, distorted power chords
                     (double-tracked left/right), driving bass
jazz       110-170   swung ride cymbal with hi-hat on 2 and 4, walking upright bass,
                     syncopated 7th-chord comping on an electric piano, room reverb
chiptune   140-180   pulse-wave lead, fast arpeggios, 4-bit triangle bass, noise drums
lofi       70-90     lazy swung boom-bap drums, warbly (tape wow) electric-piano 7th/9th
                     chords, sub bass, everything low-passed, vinyl crackle and hiss
classical  60-100    piano: melody over Alberti or broken-chord bass, rubato, hall reverb;
                     no drums
folk       90-120    Karplus-Strong acoustic guitar (fingerpicked or strummed), optional
                     tin whistle melody and shaker
=========  ========  ====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from musicray.demo.dsp import (
    _CHIP_TRIANGLE, _F32, _decay, _fade, _filter, _gate, _harmonic_table, _hz, _noise, _oscillator, _place,
    _pulse_table, _read_table, _reverb, _saw, _table_oscillator, _through_lowpass,
)
from musicray.demo.instruments import (
    _Sampler, _acoustic_piano, _chip_noise, _clap, _decaying_tone, _electric_piano, _karplus_strong, _kick,
    _noise_hit, _ride, _snare, _vinyl,
)
from musicray.demo.plan import STYLES
from musicray.demo.song import _Mix, _Song


def _ambient(song: _Song, mix: _Mix) -> None:
    rng, sr, n = song.rng, song.sr, song.n
    bars_per_chord = 2
    tone, cutoff = _saw(12, rng.uniform(0.35, 0.65)), rng.uniform(700, 1500)
    detune = rng.uniform(0.002, 0.006)
    attack, release = rng.uniform(1.0, 2.5), rng.uniform(1.5, 3.0)
    pad = np.zeros((2, n), dtype=_F32)  # chord notes alternate between a left- and a right-leaning voice
    for slot, bar in enumerate(range(0, song.bars, bars_per_chord)):
        length = int((song.duration(4 * bars_per_chord) + release) * sr)  # rings into the next chord
        envelope = _gate(length, sr, attack, release)
        for k, note in enumerate(song.chord(slot, size=4, octave=1)):
            f = _hz(note) * (1 + detune * rng.uniform(-1, 1))  # detuned notes beat slowly against each other
            tone_through = _through_lowpass(tone, f, cutoff)
            _place(pad[k % 2], song.at(4 * bar), _oscillator(f, length, sr, tone_through, rng.random()) * envelope)
    mix.add_stereo(0.22 * pad[0] + 0.08 * pad[1], 0.08 * pad[0] + 0.22 * pad[1])
    mix.add(_fade(_oscillator(_hz(song.tonic - 12), n, sr, [1.0, 0.3]), sr, 3.0, 3.0), 0.25)  # drone

    ratio = rng.uniform(2.7, 3.0)  # bells: an inharmonic upper partial
    ring = int(3 * sr)
    bell = _Sampler(lambda f: _oscillator(f, ring, sr, [1.0]) * _decay(ring, sr, 1.2)
                    + 0.3 * _oscillator(f * ratio, ring, sr, [1.0]) * _decay(ring, sr, 0.4), sr, release=0.5)
    bells = song.silence()
    beats = np.flatnonzero(rng.random(4 * song.bars) < rng.uniform(0.15, 0.35))
    for beat, degree in zip(beats, song.melody(len(beats), 7, 14)):
        bell.play(bells, song.at(beat), song.pitch(degree, 1), 2.5, rng.uniform(0.5, 1.0))
    mix.add(bells, 0.12, pan=rng.uniform(-0.6, 0.6))
    mix.out = _reverb(mix.out, sr, rng, seconds=rng.uniform(2.5, 3.5), wet=0.7, damping=3000.0)


def _techno(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    mix.add(song.hits(_kick(sr, top=rng.uniform(130, 180), decay=rng.uniform(0.15, 0.25)), [0, 1, 2, 3]), 0.9)
    hat = _noise_hit(sr, rng, 0.1, rng.uniform(0.015, 0.035), (rng.uniform(6000, 8000), None))
    hats = song.hits(hat, [0.5, 1.5, 2.5, 3.5])
    if rng.random() < 0.6:
        song.hits(hat, [beat + q for beat in range(4) for q in (0.25, 0.75)], [0.35] * 8, jitter=0.3, into=hats)
    mix.add(hats, 0.5, pan=rng.uniform(-0.3, 0.3))
    if rng.random() < 0.7:
        mix.add(song.hits(_clap(sr, rng), [1, 3]), 0.35, pan=0.1)

    bass = _Sampler(_decaying_tone(sr, _saw(20, rng.uniform(0.8, 1.0)), 0.5, 0.12, cutoff=rng.uniform(400, 1200)), sr)
    line = song.silence()
    offsets = (0.25, 0.5, 0.75) if rng.random() < 0.6 else (0.5,)  # rolling 16ths, else off-beat bass
    for bar in range(song.bars):
        for position in (beat + offset for beat in range(4) for offset in offsets):
            note = song.pitch(song.root(bar // 2), -1) + (12 if rng.random() < 0.15 else 0)
            bass.play(line, song.at(4 * bar + position), note, song.duration(0.2))
    mix.add(line, 0.45)

    stab = _Sampler(_decaying_tone(sr, _saw(25), 0.6, 0.12, cutoff=rng.uniform(1500, 3500)), sr)
    stabs = song.silence()
    rhythm = np.flatnonzero(rng.random(32) < 0.15) / 4  # a two-bar 16th-note pattern
    for bar in range(0, song.bars, 2):
        for position in rhythm:
            for note in song.chord(bar // 2, size=4, octave=1):
                stab.play(stabs, song.at(4 * bar + position), note, song.duration(0.25), 0.5)
    echo = song.silence()  # a dotted-8th echo, mostly on the other side
    _place(echo, int(song.duration(0.75) * sr), stabs, 0.45)
    mix.add_stereo(0.3 * stabs + 0.1 * echo, 0.1 * stabs + 0.3 * echo)


def _rock(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    kicks = [0, 2] + ([2.5] if rng.random() < 0.5 else [])
    mix.add(song.hits(_kick(sr, top=rng.uniform(110, 140), decay=0.12), kicks), 0.8)
    mix.add(song.hits(_snare(sr, rng, snappy=rng.uniform(0.12, 0.2)), [1, 3], jitter=0.1), 0.6, pan=0.05)
    hat = _noise_hit(sr, rng, 0.1, 0.04, (7000.0, None))
    mix.add(song.hits(hat, [k / 2 for k in range(8)], [1.0, 0.6] * 4, jitter=0.2), 0.3, pan=-0.2)
    crashes = song.silence()
    crash = _noise_hit(sr, rng, 2.0, 0.8, (4000.0, None))
    for bar in range(0, song.bars, 4):
        _place(crashes, song.at(4 * bar), crash)
    mix.add(crashes, 0.2, pan=0.4)

    sustained = rng.random() < 0.4  # open ringing chords, else palm-muted 8th-note chugs
    tone, ring, length = _saw(40, rng.uniform(0.9, 1.0)), (1.2 if sustained else 0.09), int(2 * sr)
    drive, cabinet = rng.uniform(4, 12), rng.uniform(3000, 5000)

    def power_chord(f: float) -> np.ndarray:  # root, fifth and octave, two slightly detuned strings each
        strings = sum(_oscillator(f * ratio * detune, length, sr, tone, phase)
                      for ratio in (1.0, 1.4983, 2.0) for detune, phase in ((1.0, 0.0), (1.004, 0.3)))
        distorted = np.tanh(drive / 6 * strings * _decay(length, sr, ring)) / _F32(np.tanh(drive))
        return _filter(_filter(distorted, "lowpass", cabinet, sr), "highpass", 90.0, sr)

    guitar, strings = _Sampler(power_chord, sr), song.silence()
    lowest = 40  # a guitar's low E
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        root += 12 * math.ceil((lowest - root) / 12) if root < lowest else 0
        strokes = [(0.0, 4.0)] if sustained else [(k / 2, 0.5) for k in range(8)]
        for position, beats in strokes:
            guitar.play(strings, song.at(4 * bar + position), root, song.duration(beats))
    double = song.silence()  # the same part a few milliseconds later on the other side: double-tracking
    _place(double, int(rng.uniform(0.012, 0.025) * sr), strings)
    mix.add_stereo(0.35 * strings + 0.1 * double, 0.1 * strings + 0.35 * double)

    bass = _Sampler(_decaying_tone(sr, _saw(15, 0.7), 1.0, 0.25, cutoff=900.0), sr)
    line = song.silence()
    for bar in range(song.bars):
        for k in range(8):
            bass.play(line, song.at(4 * bar + k / 2), song.pitch(song.root(bar), -2), song.duration(0.45))
    mix.add(line, 0.4)


def _jazz(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    ride = _ride(sr, rng, decay=rng.uniform(0.6, 1.1))  # "ding, ding-a ding, ding-a": the "a"s are swung 8ths
    mix.add(song.hits(ride, [0, 1, 1.5, 2, 3, 3.5], [1.0, 0.8, 0.5, 1.0, 0.8, 0.5], jitter=0.2), 0.14, pan=0.35)
    mix.add(song.hits(_noise_hit(sr, rng, 0.1, 0.02, (5000.0, 12000.0)), [1, 3]), 0.2, pan=-0.3)  # hi-hat foot
    if rng.random() < 0.5:  # a soft kick "feathered" on every beat
        mix.add(song.hits(_kick(sr, top=90, bottom=50, decay=0.1), [0, 1, 2, 3]), 0.15)

    upright = _Sampler(_decaying_tone(sr, [1.0, 0.5, 0.15], 1.5, 0.45), sr, release=0.05)
    walk = song.silence()
    for bar in range(song.bars):
        root, next_root = song.pitch(song.root(bar), -1), song.pitch(song.root(bar + 1), -1)
        third, fifth = song.pitch(song.root(bar) + 2, -1), song.pitch(song.root(bar) + 4, -1)
        approach = next_root + int(rng.choice([-1, 1]))  # a chromatic step into the next bar's root
        for beat, note in enumerate([root, int(rng.choice([third, fifth])), int(rng.choice([root, third, fifth])),
                                     approach]):
            upright.play(walk, song.at(4 * bar + beat), note, song.duration(0.9), rng.uniform(0.8, 1.0))
    mix.add(walk, 0.5, pan=-0.1)

    piano = _Sampler(_electric_piano(sr, rng), sr, release=0.08)
    comping = song.silence()
    for bar in range(song.bars):
        for position in (p for p in (0.0, 0.5, 1.5, 2.5, 3.0, 3.5) if rng.random() < 0.3):
            for note in song.chord(bar, size=4, octave=1)[1:]:  # rootless voicing: the bass has the root
                piano.play(comping, song.at(4 * bar + position), note, song.duration(rng.uniform(0.3, 0.9)), 0.35)
    mix.add(comping, 0.5, pan=0.2)
    mix.out = _reverb(mix.out, sr, rng, seconds=1.2, wet=0.25)


def _chiptune(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    blip = int(0.6 * sr)

    def chip(table: np.ndarray) -> _Sampler:  # flat volume with a slight fall, like a sound chip's envelope
        return _Sampler(lambda f: _table_oscillator(table, f, blip, sr) * _decay(blip, sr, 0.8, attack=0.001), sr,
                        release=0.005)

    lead, melody = chip(_pulse_table(rng.choice([0.125, 0.25, 0.5]))), song.silence()
    step = 0.5 if rng.random() < 0.6 else 0.25
    positions = np.arange(0, 4 * song.bars, step)
    for position, degree in zip(positions, song.melody(len(positions), 7, 17, leap=0.3)):
        if rng.random() > 0.15:  # a few rests
            lead.play(melody, song.at(position), song.pitch(degree, 1), song.duration(step * 0.9))
    mix.add(melody, 0.22, pan=-0.15)

    arpeggiator, arpeggios = chip(_pulse_table(rng.choice([0.25, 0.5]))), song.silence()
    speed = 0.25 if rng.random() < 0.5 else 0.125
    for bar in range(song.bars):
        chord = song.chord(bar, size=3, octave=1)
        for k, position in enumerate(np.arange(0, 4, speed)):
            arpeggiator.play(arpeggios, song.at(4 * bar + position), chord[k % 3], song.duration(speed))
    mix.add(arpeggios, 0.12, pan=0.25)

    triangle = _Sampler(lambda f: _table_oscillator(_CHIP_TRIANGLE, f, int(0.5 * sr), sr), sr, release=0.005)
    bass = song.silence()
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        for k in range(8):
            triangle.play(bass, song.at(4 * bar + k / 2), root + (0, 12, 7, 12)[k % 4], song.duration(0.45))
    mix.add(bass, 0.35)

    rate = rng.uniform(4000, 12000)  # the noise channel's clock: lower sounds grittier
    mix.add(song.hits(_chip_noise(sr, rng, 0.15, 0.06, rate / 4), [0, 2]), 0.3)
    mix.add(song.hits(_chip_noise(sr, rng, 0.2, 0.07, rate), [1, 3]), 0.22)
    mix.add(song.hits(_chip_noise(sr, rng, 0.05, 0.012, 2 * rate), [k / 2 for k in range(8)]), 0.12)


def _lofi(song: _Song, mix: _Mix) -> None:
    rng, sr, n = song.rng, song.sr, song.n
    dusty = rng.uniform(2500, 4500)  # every part is low-passed here: a worn, dusty top end

    def worn(sample: np.ndarray) -> np.ndarray:
        return _filter(sample, "lowpass", dusty, sr)

    drums = song.hits(worn(_kick(sr, top=100, bottom=45, decay=0.2)), [0, 1.75, 2.5], [1.0, 0.6, 0.8])
    song.hits(worn(_snare(sr, rng, tone=170, snappy=0.1)), [1, 3], [0.7, 0.7], jitter=0.2, into=drums)
    song.hits(worn(_noise_hit(sr, rng, 0.1, 0.03, (5000.0, None))), [k / 2 for k in range(8)], [0.25, 0.15] * 4,
              jitter=0.6, into=drums)
    mix.add(drums, 0.6)

    wow = (rng.uniform(0.3, 0.8), rng.uniform(0.001, 0.003))  # warbly keys, like worn tape
    piano = _Sampler(_electric_piano(sr, rng, seconds=4.0, cutoff=dusty, wow=wow), sr, release=0.2)
    keys = song.silence()
    size = int(rng.choice([4, 5]))  # 7th or 9th chords
    roll = rng.uniform(0.01, 0.03)  # chords rolled lazily, lowest note first
    for bar in range(song.bars):
        for k, note in enumerate(song.chord(bar, size=size, octave=0)):
            start = song.at(4 * bar) + int(k * roll * sr)
            piano.play(keys, start, note + 12 * (k == 0), song.duration(3.8), rng.uniform(0.25, 0.35))
    mix.add(keys, 0.7, pan=rng.uniform(-0.2, 0.2))

    sub = _Sampler(_decaying_tone(sr, [1.0, 0.1], 2.0, 0.6), sr)
    line = song.silence()
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        sub.play(line, song.at(4 * bar), root, song.duration(1.5))
        sub.play(line, song.at(4 * bar + 2.5), root, song.duration(1.0), 0.8)
    mix.add(line, 0.5)
    mix.add(_vinyl(n, sr, rng, dusty), 0.3)


def _classical(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    song.rubato = rng.uniform(0.05, 0.12)
    piano = _Sampler(_acoustic_piano(sr, rng), sr, release=0.15)
    left, right = song.silence(), song.silence()
    alberti = rng.random() < 0.5  # low-high-middle-high, else a rising broken chord
    for bar in range(song.bars):
        low, third, fifth = song.chord(bar, size=3, octave=-1)
        figure = [low, fifth, third, fifth] if alberti else [low, fifth, low + 12, third + 12]
        for k in range(8):
            piano.play(left, song.at(4 * bar + k / 2), figure[k % 4], song.duration(0.5), 0.35)

    bars_per_phrase = 4
    for phrase_start in range(0, song.bars, bars_per_phrase):
        rhythm: list[float] = []
        while sum(rhythm) < 4 * (bars_per_phrase - 1):  # quarters and 8th pairs, then a long closing note
            rhythm += [1.0] if rng.random() < 0.6 else [0.5, 0.5]
        rhythm.append(4 * bars_per_phrase - sum(rhythm))
        position = 4.0 * phrase_start
        swell = np.sin(np.linspace(0.3, np.pi - 0.3, len(rhythm)))  # louder mid-phrase
        for beats, degree, loudness in zip(rhythm, song.melody(len(rhythm), 7, 16), swell):
            piano.play(right, song.at(position), song.pitch(degree, 1), song.duration(beats), 0.4 + 0.4 * loudness)
            position += beats
    mix.add(left, 0.6, pan=-0.25)
    mix.add(right, 0.7, pan=0.2)
    mix.out = _reverb(mix.out, sr, rng, seconds=rng.uniform(1.8, 2.6), wet=0.35)


def _folk(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    pick, damping = rng.uniform(1000, 3000), rng.uniform(1500, 4000)
    longest = int(1.5 * sr)  # no note here is held longer
    guitar = _Sampler(lambda f: _karplus_strong(f, longest, sr, rng, ring=2.5, damping=damping, pick=pick), sr,
                      release=0.08)
    strings = song.silence()
    strummed = rng.random() < 0.5  # else fingerpicked, Travis style
    for bar in range(song.bars):
        root, third, fifth = song.chord(bar, size=3, octave=-1)
        if strummed:
            shape = [root, fifth, root + 12, third + 12, fifth + 12, root + 24]  # six strings, low to high
            for position, down in ((0, True), (1, True), (1.5, False), (2.5, False), (3, True), (3.5, False)):
                order = shape if down else shape[:1:-1]  # up-strokes catch the high strings only
                spread = rng.uniform(0.008, 0.015)  # seconds between neighbouring strings
                for k, note in enumerate(order):
                    start = song.at(4 * bar + position) + int(k * spread * sr)
                    guitar.play(strings, start, note, song.duration(0.5), 0.35 if down else 0.25)
        else:
            for beat in range(4):  # the thumb alternates root and fifth, the fingers pick on the off-beats
                guitar.play(strings, song.at(4 * bar + beat), (root, fifth)[beat % 2], song.duration(1.0), 0.6)
                guitar.play(strings, song.at(4 * bar + beat + 0.5), (third, fifth, root)[beat % 3] + 12,
                            song.duration(0.5), 0.45)
    mix.add(strings, 0.6, pan=rng.uniform(-0.3, 0.3))

    if rng.random() < 0.6:  # a tin whistle: near-sine with vibrato and breath noise
        whistle = song.silence()
        table = _harmonic_table((1.0, 0.1))
        for beat, degree in zip(range(4 * song.bars), song.melody(4 * song.bars, 14, 21)):
            if rng.random() < 0.2:
                continue
            length = int(song.duration(1.0) * sr)
            t = np.arange(length) / sr
            vibrato = 0.004 / (2 * np.pi * 5.5) * np.sin(2 * np.pi * 5.5 * t)
            tone = _read_table(table, _hz(song.pitch(degree, 1)) * (t + vibrato)) + 0.05 * _noise(rng, length)
            _place(whistle, song.at(beat), tone * _gate(length, sr, 0.03, 0.05))
        mix.add(whistle, 0.15, pan=0.3)
    if rng.random() < 0.5:
        shaker = _noise_hit(sr, rng, 0.1, 0.03, (4000.0, 10000.0))
        mix.add(song.hits(shaker, [k / 2 for k in range(8)], [0.6, 1.0] * 4, jitter=0.3), 0.1, pan=-0.4)


_ARRANGEMENTS: dict[str, Callable[[_Song, _Mix], None]] = {
    "ambient": _ambient, "techno": _techno, "rock": _rock, "jazz": _jazz,
    "chiptune": _chiptune, "lofi": _lofi, "classical": _classical, "folk": _folk,
}
assert set(_ARRANGEMENTS) == set(STYLES)

_SWING = {"jazz": (0.6, 0.68), "lofi": (0.55, 0.62)}

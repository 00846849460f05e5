"""The synthetic demo catalog: procedurally synthesised tracks in distinct styles, plus listening sessions.

``generate(out)`` writes::

    out/
      audio/trk00000.flac ...   one file per track: FLAC, MP3, Ogg Vorbis or WAV in about equal shares,
                                at 22050, 32000, 44100 or 48000 Hz, mono or stereo (drawn per track,
                                independently of the style, so none of them gives the style away)
      catalog.parquet           one row per track, sorted by track_id (columns: ``plan._CATALOG_SCHEMA``)
      sessions_train.parquet    user_id, session_id, track_id, ts (timestamp[us, UTC]); sorted by
      sessions_test.parquet     user, session, ts; a session_id lives in one file only
      cold_tracks.txt           the cold track ids, one per line

Everything is a pure function of the arguments: a rerun with the same arguments writes the same
audio samples and byte-identical Parquet files (Ogg files may differ in their random stream serial
number only). Each track draws from its own ``np.random.default_rng([seed, 0, track_index])``, so
tracks are reproducible on their own and the number of worker processes changes nothing.

Modules, one idea each (names with a leading underscore are internal to this package; callers use
the names exported here: the demo's three, and the listening model that any catalog of styled,
artist-attributed tracks can draw its sessions from, as ``benchmarks/catalogs/real_music.py`` does):

=============  ===================================================================================
plan           which track is what: styles, modes, progressions, artists, titles, formats; the
               catalog table
dsp            signal primitives: wavetable oscillators, envelopes, noise, filters, reverb
instruments    voices and the sampler that plays them, drum one-shots, vinyl noise
song           the musical frame (beats, scales, chords, swing, rubato) and the stereo mix bus
styles         the eight style renderers, and how each one sounds
render         one planned track to one audio file
listeners      listeners and their sessions: the rules the listening log follows, over any tracks
build          ``generate``: the folder written end to end
=============  ===================================================================================
"""

from musicray.demo.build import DemoCatalog, generate
from musicray.demo.listeners import DEMO_LISTENING, ListenedTrack, ListeningStyles, listening_sessions
from musicray.demo.plan import STYLES

__all__ = ["DEMO_LISTENING", "STYLES", "DemoCatalog", "ListenedTrack", "ListeningStyles", "generate",
           "listening_sessions"]

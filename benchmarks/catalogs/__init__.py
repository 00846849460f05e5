"""Test catalogs to measure recommenders, cold start and tagging on, built only from what the package
registries ship (no downloads at run time).

``real_music``  public-domain scores from music21's corpus rendered with a General MIDI soundfont,
                in about a dozen styles, with listening sessions drawn by the demo's listening model.
"""

"""MedSynth analysis package."""

"""MedSynth evalapp package."""

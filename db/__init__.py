"""MedSynth db package."""

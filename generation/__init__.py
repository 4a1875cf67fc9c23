"""MedSynth generation package."""

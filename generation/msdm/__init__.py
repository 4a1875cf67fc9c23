"""MSDM: a compact Stable-Diffusion-style latent diffusion model trained from scratch on domain data."""

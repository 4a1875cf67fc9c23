"""MSDM: a compact Stable-Diffusion-style latent diffusion model trained from scratch on domain data.

* :mod:`generation.msdm.config` -- dataclass configs, ``get_config("tiny" | "paper")``.
* :mod:`generation.msdm.pipeline` -- build / save / load the pipeline (a stock diffusers
  ``StableDiffusionPipeline``), ``load_msdm_pipeline(folder)``, ``load_demo_pipeline()``, ``generate``.
* :mod:`generation.msdm.train` -- ``train_msdm(config, images, out_dir, ...)``: VAE then UNet via accelerate.
* :mod:`generation.msdm.train_demo` -- ``python -m generation.msdm.train_demo``: the committed demo model.
"""

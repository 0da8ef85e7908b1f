"""Training FLUX.1 Kontext [dev] LoRAs from before/after pairs.

``dataset`` reads the layouts users already have and checks them; ``buckets`` groups pairs by working
size; ``cache`` keeps VAE latents and text embeddings on disk by content hash; ``trainer`` runs the
flow-matching LoRA training; ``export`` writes the kohya / ComfyUI key layout; ``memory`` estimates the
memory a run needs.
"""

"""Neural SoulX-FlashHead renderer (Lite / Pro): DiT, audio path, VAEs, sampler, streaming, weights tools.

Heavy imports (torch, diffusers, transformers) happen when these modules are imported, not here.
"""

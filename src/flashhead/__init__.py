"""flashhead: a self-hosted, fal-compatible talking-head service.

    from flashhead import generate_video, verify_webhook, configure_fal_client
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import flashhead` stays cheap (no mediapipe/torch) until a name is used.
    if name in ("verify_webhook", "configure_fal_client"):
        from flashhead import client

        return getattr(client, name)
    if name in ("generate", "Engines", "request_from_input"):
        from flashhead import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)

"""Helpers for programs that talk to a flashhead server with the official fal clients."""
from flashhead.api.client_helper import configure_fal_client, fal_urls
from flashhead.jobs.webhooks import verify_webhook

__all__ = ["configure_fal_client", "fal_urls", "verify_webhook"]

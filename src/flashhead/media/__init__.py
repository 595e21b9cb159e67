"""Inputs: fetch (URL with SSRF guard, data URI, path), image (decode, face crop), audio (decode)."""

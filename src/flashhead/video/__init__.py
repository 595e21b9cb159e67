"""Output video: encode (faststart MP4, fragmented MP4 segments), fmp4 (boxes), probe (read back)."""

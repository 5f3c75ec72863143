"""Delivery: the pipeline, one engine per output, and the dead-letter file."""

"""Routing and mapping: which outputs an event goes to, and the body each gets."""

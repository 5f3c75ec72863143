"""Ready-made Jinja body templates shipped with nwpipe."""

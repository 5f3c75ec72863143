"""Where events come from: decoding and the sources that read them."""

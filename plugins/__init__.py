"""Built-in nwpipe plugins: ordinary plugin modules, registered like third-party ones."""

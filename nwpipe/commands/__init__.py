"""The commands: each turns a command line into a call of the library."""

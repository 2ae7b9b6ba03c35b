"""The domain: pure, no trio, no I/O, no clock of its own."""

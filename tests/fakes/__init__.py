"""Fakes of outside services at their wire boundary (injected transports, loopback servers); never of our ports."""

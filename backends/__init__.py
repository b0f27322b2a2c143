"""Backends shipped with privacy-bridge; each registers through an entry point."""

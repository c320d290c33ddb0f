"""Tests that need a CUDA GPU (marked ``gpu``; skipped with the reason where none exists)."""

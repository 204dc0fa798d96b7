"""The SOPHIA behaviour model: captions -> reasoning -> rewards -> selection -> trajectory store."""

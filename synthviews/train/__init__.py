"""Trainers of the built-in generators and the digits data they learn from."""

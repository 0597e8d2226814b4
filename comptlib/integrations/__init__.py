"""Glue to training loops that are not comptlib's: growth and distillation inside the loop a user already has."""

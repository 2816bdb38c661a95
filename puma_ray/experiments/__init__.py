"""Runs made of many stages: migration trials, sweeps, bench, the demo, claims and their statistics."""

"""Combination strategies, strategy selection on out-of-fold evidence, agreement, config + semver."""

"""Tests of core/final: selection rules, dedup, balance, split, report and export."""

"""Shared text: COCO categories, their surface forms in English, and mention extraction."""

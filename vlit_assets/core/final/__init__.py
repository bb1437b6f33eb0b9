"""Final stage: selection rules, the split and the exports of what ships."""

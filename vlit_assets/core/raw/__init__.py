"""Raw stage (data collection): annotation files, image checks, tags and imported datasets."""

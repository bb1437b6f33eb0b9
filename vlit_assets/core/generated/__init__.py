"""Generated stage (instruction generation): templates, region images, self-instruct, LLM client."""

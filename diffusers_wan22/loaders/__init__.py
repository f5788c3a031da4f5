"""Reading checkpoints: official folders (checks, key maps, component loaders, conversion), LoRA, lazy expert
sources, the built-in tiny random-weight components, and the pipelines' loading classmethods."""

"""The torch-free bottom layer: shared names, official variant defaults, official->diffusers tensor names and the
memory planner's arithmetic. Nothing here imports torch, diffusers or transformers."""

"""Video, audio and image I/O, the official size rules, distributed helpers and model specs for the planner."""

"""Official Wan 2.2 sigma grids on diffusers' flow-matching schedulers, and the expert of every step."""

"""Convert an official Wan 2.2 checkpoint folder to a diffusers folder (same as `wan22 convert`).

    python conversion/convert_wan22_to_diffusers.py ./Wan2.2-T2V-A14B ./Wan2.2-T2V-A14B-wan22 --dtype bf16 --verify
    python conversion/convert_wan22_to_diffusers.py ./Wan2.2-I2V-A14B ./i2v-diffusers --layout diffusers
"""

import sys

from diffusers_wan22.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))

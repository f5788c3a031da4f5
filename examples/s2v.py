"""Speech-to-video with Wan 2.2 S2V-14B: a reference image talks or sings along an audio file (audio muxed in).

    python examples/s2v.py --model ./Wan2.2-S2V-14B --image face.png --audio speech.wav --prompt "A woman is singing."
    python examples/s2v.py --model tiny            # random-weight demo model, synthetic image and tone
"""

import argparse

import numpy as np
import PIL.Image
import torch

from diffusers_wan22 import Wan22SpeechToVideoPipeline, load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--image", help="reference image (required unless --model tiny)")
parser.add_argument("--audio", help="speech or song, any format ffmpeg reads (required unless --model tiny)")
parser.add_argument("--pose-video", default=None, help="optional pose-driving video")
parser.add_argument("--prompt", default="A woman is singing.")
parser.add_argument("--max-area", type=int, default=1024 * 704, help="pixel budget (official --size 1024*704)")
parser.add_argument("--num-clips", type=int, default=None, help="default: as many as the audio needs")
parser.add_argument("--output", default="s2v.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
model = "tiny:s2v-14B" if tiny else args.model
pipe = load_pipeline(model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22SpeechToVideoPipeline)
if torch.cuda.is_available():
    pipe.enable_model_cpu_offload()  # text encoder, wav2vec2, transformer and VAE take turns on the GPU
if tiny:
    image = PIL.Image.fromarray(np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8))
    t = np.arange(int(0.4 * 16000)) / 16000
    audio = ((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)  # (samples, sampling rate)
    call = dict(max_area=64 * 64, infer_frames=8, num_inference_steps=2)
else:
    image, audio, call = PIL.Image.open(args.image).convert("RGB"), args.audio, dict(max_area=args.max_area)
out = pipe(image=image, audio=audio, prompt=args.prompt, num_clips=args.num_clips, pose_video=args.pose_video,
           generator=torch.Generator("cpu").manual_seed(0), **call)
save_video(out.frames[0], args.output, fps=out.fps, audio=out.audio, sampling_rate=out.sampling_rate)
print(f"wrote {args.output}: {out.num_clips} clip(s), {out.frames.shape[1]} frames at {out.fps} fps, with audio")

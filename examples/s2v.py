"""Speech-to-video with Wan 2.2 S2V-14B: a reference image talks or sings along an audio file (audio muxed in).
Flags are those of `wan22 generate` (--size is an area budget; --num_clip, --infer_frames per clip).

    python examples/s2v.py --model ./Wan2.2-S2V-14B --image face.png --audio speech.wav --prompt "A woman is singing."
    python examples/s2v.py --model tiny            # random-weight demo model, synthetic image and tone
"""

import numpy as np
import PIL.Image
import torch

from diffusers_wan22 import Wan22SpeechToVideoPipeline, load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "image", "audio", "pose_video", "prompt", "size", "num_clip",
                                    "infer_frames", "sample_steps", "base_seed", "output", "overwrite"],
                          task="s2v-14B", prompt="A woman is singing.", output="s2v.mp4")
tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22SpeechToVideoPipeline)
if torch.cuda.is_available():
    pipe.enable_model_cpu_offload()  # text encoder, wav2vec2, transformer and VAE take turns on the GPU
if args.image is None:  # --model tiny without --image: a synthetic gradient
    image = PIL.Image.fromarray(np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8))
else:
    image = PIL.Image.open(args.image).convert("RGB")
if args.audio is None:  # --model tiny without --audio: a 0.4 s tone, as (samples, sampling rate)
    t = np.arange(int(0.4 * 16000)) / 16000
    audio = ((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
else:
    audio = str(args.audio)
out = pipe(image=image, audio=audio, prompt=args.prompt, num_clips=args.num_clip, infer_frames=args.infer_frames,
           max_area=None if args.size is None else args.size[0] * args.size[1], num_inference_steps=args.sample_steps,
           pose_video=None if args.pose_video is None else str(args.pose_video),
           generator=torch.Generator("cpu").manual_seed(args.base_seed))
save_video(out.frames[0], args.output, fps=out.fps, audio=out.audio, sampling_rate=out.sampling_rate)
print(f"wrote {args.output}: {out.num_clips} clip(s), {out.frames.shape[1]} frames at {out.fps} fps, with audio")

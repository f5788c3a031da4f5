"""Character animation / replacement with Wan 2.2 Animate-14B from the official preprocessing output folder
(src_ref.png, src_pose.mp4, src_face.mp4 [, src_bg.mp4, src_mask.mp4]). Flags are those of `wan22 generate`
(--frame_num = frames per clip). Needs the official Animate folder (no tiny model):

    python examples/animate.py --model ./Wan2.2-Animate-14B --src_root_path ./process_results
    python examples/animate.py --model ./Wan2.2-Animate-14B --src_root_path ./process_results --replace_flag \
        --use_relighting_lora
"""

import torch

from diffusers_wan22 import Wan22AnimatePipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "src_root_path", "replace_flag", "use_relighting_lora", "refert_num",
                                    "prompt", "frame_num", "sample_steps", "base_seed", "output", "overwrite"],
                          task="animate-14B", required=("src_root_path",), output="animate.mp4")
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = Wan22AnimatePipeline.from_official(args.model, use_relighting_lora=args.use_relighting_lora,
                                          dtype=torch.bfloat16 if device == "cuda" else torch.float32)
if device == "cuda":
    pipe.enable_model_cpu_offload()  # text encoder, CLIP, transformer and VAE take turns on the GPU
src = args.src_root_path
inputs = dict(image=f"{src}/src_ref.png", pose_video=f"{src}/src_pose.mp4", face_video=f"{src}/src_face.mp4")
if args.replace_flag:  # replace the person in the video: its background and the person's mask
    inputs.update(background_video=f"{src}/src_bg.mp4", mask_video=f"{src}/src_mask.mp4")
out = pipe(**inputs, mode="replace" if args.replace_flag else "animate", prompt=args.prompt,
           segment_frame_length=args.frame_num, prev_segment_conditioning_frames=args.refert_num or 1,
           num_inference_steps=args.sample_steps, generator=torch.Generator("cpu").manual_seed(args.base_seed))
print(f"{out.num_clips} clip(s), {len(out.frames[0])} frames")
save_video(out.frames[0], args.output, fps=out.fps)
print("wrote", args.output)

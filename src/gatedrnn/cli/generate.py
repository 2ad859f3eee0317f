"""`gatedrnn generate CHECKPOINT`: sample text from a character-level language model checkpoint."""
from __future__ import annotations

import argparse

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a charlm run directory (uses best/), checkpoint directory, or file inside one")
    parser.add_argument("--prompt", default="In the beginning",
                        help="text to start from; every character must be in the model's vocabulary "
                             "(default: 'In the beginning')")
    parser.add_argument("--length", type=int, default=300, help="characters to generate (default: 300)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature: 0 takes the likeliest character, higher is more random (default: 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.length < 0:
        raise CLIError(f"--length should be an integer >= 0, got {args.length}")
    if args.temperature < 0:
        raise CLIError(f"--temperature should be a number >= 0, got {args.temperature}")
    if not args.prompt:
        raise CLIError("--prompt should hold at least one character")
    import torch

    from gatedrnn.cli.evaluate import load_checkpoint_or_fail

    model, config, task = load_checkpoint_or_fail(args.checkpoint)
    encode, decode = getattr(task, "encode", None), getattr(task, "decode", None)
    if not callable(getattr(model, "generate", None)) or not callable(encode) or not callable(decode):
        raise CLIError(f"checkpoint {args.checkpoint!r} is a {config.task!r} model, not a character-level "
                       f"language model (train one with --task charlm)")
    try:
        prompt_ids = torch.as_tensor(encode(args.prompt), dtype=torch.long)
    except (KeyError, ValueError) as error:
        raise CLIError(f"the prompt has characters outside the model's vocabulary: {error}") from None
    generator = torch.Generator().manual_seed(args.seed)
    ids = model.generate(prompt_ids, args.length, temperature=args.temperature, generator=generator)
    print(decode(ids))
    return 0

"""`elmjax models list | info NAME | convert NAME [--out DIR]`.

See docs/architecture.md, "Command line". `info` prints a JSON summary (name, source, parameter
count, vocabulary, config, the logical -> mesh axis rules) and then the flax.nnx module tree
with every parameter's shape, dtype and partitioning.
"""

from __future__ import annotations

import argparse
import json
import sys


def models_command(args: argparse.Namespace) -> int:
    from elmjax.lm.registry import BUILTIN, ModelNotFound, load_model, resolve

    cmd = args.models_command
    if cmd == "list":
        for name, what in BUILTIN.items():
            try:
                kind, loc = resolve(name)
                status = f"available ({loc})"
            except ModelNotFound as e:
                status = f"missing: {e}"
            print(f"{name:14s} {what}\n{'':14s} {status}")
        print("also: a local elmjax / Hugging Face directory, a .gguf file, or a hub id org/name")
        return 0
    try:
        model = load_model(args.name)
    except (ModelNotFound, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if cmd == "info":
        from elmjax.lm.partitioning import LOGICAL_RULES, module_tree
        from elmjax.lm.state import count_params

        info = {
            "name": model.name,
            "source": str(model.source),
            "parameters": count_params(model.decoder),
            "vocab": model.tokenizer.get_vocab_size(),
            "config": model.config.to_dict(),
            "partitioning_rules": {logical: mesh for logical, mesh in LOGICAL_RULES},
        }
        print(json.dumps(info, indent=2))
        print("\n".join(module_tree(model.decoder)))
        return 0
    if cmd == "convert":
        from elmjax.lm.bundle import save_model

        out = args.out or f"{model.name.replace('/', '_')}-elmjax"
        save_model(model, out)
        print(out)
        return 0
    print(f"error: unknown models command {cmd!r}", file=sys.stderr)
    return 2

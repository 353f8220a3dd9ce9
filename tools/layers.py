#!/usr/bin/env python3
"""The layering of src/ (docs/ARCHITECTURE.md), checked: every `crate::` path a file names must
lead to its own layer or one below; only the backend and ops layers may name `cudarc`; only ops
may call a launcher (`ops::<op>::cuda`). Prints each violation with file and line; exit 1 if any.
Run from the repository root (CI runs it)."""
import os, re, sys

# (layer, name, path prefixes), lowest first. A file belongs to the first layer whose prefix it
# starts with, trying longer prefixes first.
LAYERS = [
    (0, "base", ["src/error.rs", "src/hash.rs", "src/rng.rs", "src/testdir.rs", "src/progress.rs", "src/par.rs"]),
    (1, "device", ["src/cuda/", "src/tensor.rs", "src/backend.rs"]),
    (2, "ops", ["src/ops/"]),
    (3, "autograd", ["src/autograd.rs", "src/params.rs", "src/ops/*/tape.rs"]),
    (4, "modules", ["src/nn.rs", "src/optim.rs", "src/checkpoint.rs", "src/data/"]),
    (5, "distill", ["src/distill/"]),
    (6, "tasks", ["src/tasks/", "src/train/", "src/config.rs"]),
    (7, "cli", ["src/main.rs"]),
]
# What each crate-level module path belongs to (the first segment after `crate::`).
MODULES = {
    "error": 0, "hash": 0, "rng": 0, "testdir": 0, "progress": 0, "bail": 0, "Error": 0, "Result": 0,
    "hash_uniform": 0, "Rng": 0, "named_choices": 0, "par": 0,
    "cuda": 1, "tensor": 1, "Tensor": 1, "Device": 1, "DType": 1, "backend": 1, "Backend": 1,
    "ops": 2, "DistillLoss": 2, "DistillParams": 2,
    "autograd": 3, "params": 3, "Graph": 3, "Var": 3, "Grads": 3, "ParamStore": 3,
    "nn": 4, "optim": 4, "checkpoint": 4, "data": 4,
    "distill": 5,
    "tasks": 6, "train": 6, "config": 6,
    # the config macros, exported at the crate root
    "config_table": 6, "config_enum": 6, "with_run_options": 6, "__config_table_impl": 6, "__clap": 6,
}


def layer_of(path):
    best = None
    for level, name, prefixes in LAYERS:
        for p in prefixes:
            if "*" in p:
                rx = "^" + re.escape(p).replace(r"\*", "[^/]+") + "$"
                ok = re.match(rx, path) is not None
                plen = 1000 if ok else -1
            else:
                ok = path == p or (p.endswith("/") and path.startswith(p))
                plen = len(p) if ok else -1
            if ok and (best is None or plen > best[0]):
                best = (plen, level, name)
    return (best[1], best[2]) if best else (None, None)


def main():
    bad = []
    for root, _, files in os.walk("src"):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            if path == "src/lib.rs":
                continue  # the crate root declares every module and re-exports
            if path.startswith("src/ops/") and path.endswith("/tests.rs"):
                continue  # an op's device-generic tests: compiled into tests/ops.rs, not the library
            level, name = layer_of(path)
            if level is None:
                bad.append(f"{path}: belongs to no layer (add it to tools/layers.py and docs/ARCHITECTURE.md)")
                continue
            in_tests = False
            for n, line in enumerate(open(path), 1):
                code = line.split("//")[0]
                if re.match(r"\s*#\[cfg\(test\)\]", line):
                    in_tests = True  # unit tests may reach anywhere in the crate
                if in_tests:
                    continue
                uses = set(re.findall(r"crate::(\w+)", code))
                m = re.match(r"\s*(?:pub(?:\([\w:]+\))?\s+)?use crate::\{([^}]*)", code)
                if m:
                    uses |= set(re.findall(r"(?:^|,)\s*(\w+)", m.group(1)))
                for u in sorted(uses):
                    target = MODULES.get(u)
                    if target is None:
                        bad.append(f"{path}:{n}: crate::{u} is in no layer (tools/layers.py)")
                    elif target > level:
                        bad.append(f"{path}:{n}: {name} (layer {level}) uses crate::{u} (layer {target}): {line.strip()}")
                if "cudarc" in code and level > 2:
                    bad.append(f"{path}:{n}: {name} (layer {level}) names cudarc; only the backend and ops may")
                if re.search(r"ops::\w+::cuda\b", code) and level != 2:
                    bad.append(f"{path}:{n}: {name} (layer {level}) calls a launcher; only ops may")
    for b in bad:
        print(b)
    print(f"layers: {len(bad)} violation(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

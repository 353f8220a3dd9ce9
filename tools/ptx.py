#!/usr/bin/env python3
"""Compiles kernels/*.cu to ptx/*.ptx (the library's kernels) and dev/kernels/*.cu to dev/ptx/*.ptx
(the kernel lab's, dev/README.md) with NVRTC and checks the result.

  python3 tools/ptx.py build    compile every kernel, write ptx/ and ptx/MANIFEST (and dev/ptx/)
  python3 tools/ptx.py check    recompile into a temporary folder; fail if any committed PTX or
                                the manifest differs (stale or hand-edited PTX)
  python3 tools/ptx.py ptxas    assemble every PTX for sm_90a with `ptxas -v`; print registers,
                                shared memory and spills per kernel; fail on any spill or warning

The compilers come from NVIDIA's pip wheels (versions pinned below, as in DEVELOPERS.md), installed
on first use into $CODISTILL_CUDA_TOOLS (default ~/.cache/codistill-cuda) and reused after; no CUDA
toolkit and no GPU are needed. The PTX targets compute_80 (mma.sync with bf16 needs sm_80), so it
loads on Ampere and Hopper alike; the driver finishes it for the GPU it runs on. A file named
*_sm90a.cu targets compute_90a instead (Hopper's wgmma), and loads on compute capability 9.0 only.
"""
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")
PTX = os.path.join(ROOT, "ptx")
# (sources, PTX folder): the library's kernels, and the kernel lab's (which include kernels/ headers).
SETS = [(KERNELS, PTX), (os.path.join(ROOT, "dev", "kernels"), os.path.join(ROOT, "dev", "ptx"))]
WHEELS = ["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvcc-cu12==12.9.86", "nvidia-cuda-runtime-cu12==12.9.79"]
ARCH = "compute_80"
ARCH_SM90A = "compute_90a"
PTXAS_ARCH = "sm_90a"


def tools_dir():
    base = os.environ.get("CODISTILL_CUDA_TOOLS", os.path.expanduser("~/.cache/codistill-cuda"))
    target = os.path.join(base, "wheels")
    stamp = os.path.join(target, ".installed-" + hashlib.sha256(" ".join(WHEELS).encode()).hexdigest()[:12])
    if not os.path.exists(stamp):
        print(f"installing {' '.join(WHEELS)} into {target}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade",
                        "--target", target] + WHEELS, check=True)
        open(stamp, "w").close()
    return target


def arch(name):
    return ARCH_SM90A if name.endswith("_sm90a.cu") else ARCH


def options(name, include):
    return [f"--gpu-architecture={arch(name)}", "--std=c++17", f"-I{KERNELS}", f"-I{include}", "-default-device"]


def sources(src_dir=KERNELS):
    return sorted(f for f in os.listdir(src_dir) if f.endswith(".cu"))


def rel(path):
    return os.path.relpath(path, ROOT)


def source_hash(name, opts, src_dir=KERNELS):
    """Hash of the kernel, every header in kernels/ (all may be included) and the options."""
    h = hashlib.sha256()
    for d, f in [(src_dir, name)] + [(KERNELS, f) for f in sorted(f for f in os.listdir(KERNELS) if f.endswith(".cuh"))]:
        h.update(f.encode())
        with open(os.path.join(d, f), "rb") as fh:
            h.update(fh.read())
    for o in opts:
        if not o.startswith("-I"):
            h.update(o.encode())
    h.update(" ".join(WHEELS).encode())
    return h.hexdigest()


class Nvrtc:
    def __init__(self, tools):
        lib = os.path.join(tools, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")
        self.lib = ctypes.CDLL(lib)
        self.include = os.path.join(tools, "nvidia", "cuda_runtime", "include")

    def check(self, rc, what, prog=None):
        if rc != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            msg = self.lib.nvrtcGetErrorString(rc).decode()
            log = self.log(prog) if prog is not None else ""
            raise SystemExit(f"NVRTC {what} failed: {msg}\n{log}")

    def log(self, prog):
        n = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        self.lib.nvrtcGetProgramLog(prog, buf)
        return buf.value.decode(errors="replace")

    def compile(self, name, src_dir=KERNELS):
        with open(os.path.join(src_dir, name), "rb") as fh:
            src = fh.read()
        prog = ctypes.c_void_p()
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None), "create")
        opts = options(name, self.include)
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
        log = self.log(prog).strip()
        self.check(rc, f"compile of {rel(src_dir)}/{name}", prog)
        if log:
            print(f"{rel(src_dir)}/{name}: {log}", file=sys.stderr)
        n = ctypes.c_size_t()
        self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(n)), "ptx size")
        buf = ctypes.create_string_buffer(n.value)
        self.check(self.lib.nvrtcGetPTX(prog, buf), "ptx")
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return buf.value, source_hash(name, opts, src_dir)


def build(out_dir, src_dir=KERNELS):
    nv = Nvrtc(tools_dir())
    manifest = []
    os.makedirs(out_dir, exist_ok=True)
    for name in sources(src_dir):
        ptx, h = nv.compile(name, src_dir)
        stem = name[:-3]
        tmp = os.path.join(out_dir, stem + ".ptx.tmp")
        with open(tmp, "wb") as fh:
            fh.write(ptx)
        os.replace(tmp, os.path.join(out_dir, stem + ".ptx"))
        manifest.append(f"{stem}.ptx source-sha256 {h} ptx-sha256 {hashlib.sha256(ptx).hexdigest()}")
    with open(os.path.join(out_dir, "MANIFEST.tmp"), "w") as fh:
        fh.write("# written by tools/ptx.py build; checked by tools/ptx.py check\n" + "\n".join(manifest) + "\n")
    os.replace(os.path.join(out_dir, "MANIFEST.tmp"), os.path.join(out_dir, "MANIFEST"))
    return manifest


def check():
    bad, count = [], 0
    for src_dir, ptx_dir in SETS:
        count += len(sources(src_dir))
        with tempfile.TemporaryDirectory() as tmp:
            build(tmp, src_dir)
            committed = os.listdir(ptx_dir) if os.path.isdir(ptx_dir) else []
            for f in sorted(set(os.listdir(tmp)) | set(x for x in committed if x.endswith(".ptx") or x == "MANIFEST")):
                a, b = os.path.join(tmp, f), os.path.join(ptx_dir, f)
                if not os.path.exists(b):
                    bad.append(f"{rel(ptx_dir)}/{f} is missing")
                elif not os.path.exists(a):
                    bad.append(f"{rel(ptx_dir)}/{f} has no kernel source in {rel(src_dir)}/")
                elif open(a, "rb").read() != open(b, "rb").read():
                    bad.append(f"{rel(ptx_dir)}/{f} is stale (differs from a fresh build of {rel(src_dir)}/)")
    if bad:
        raise SystemExit("PTX check failed:\n  " + "\n  ".join(bad) + "\nrun: python3 tools/ptx.py build")
    print(f"ptx check: {count} kernels (library and lab), committed PTX matches a fresh NVRTC build")


def ptxas():
    exe = os.path.join(tools_dir(), "nvidia", "cuda_nvcc", "bin", "ptxas")
    rows, spills = [], []
    for src_dir, ptx_dir, name in [(s, p, n) for s, p in SETS for n in sources(s)]:
        stem = name[:-3]
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([exe, f"-arch={PTXAS_ARCH}", "-v", "-o", os.path.join(tmp, "out.cubin"),
                                os.path.join(ptx_dir, stem + ".ptx")], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ptxas failed on {rel(ptx_dir)}/{stem}.ptx:\n{r.stderr}")
        func = None
        for line in r.stderr.splitlines():
            if "warning" in line.lower():
                # e.g. C7510: wgmma serialised (the tensor cores then wait for every instruction).
                spills.append(f"{rel(ptx_dir)}/{stem}.ptx: {line.strip()}")
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                func = m.group(1)
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and func:
                if int(m.group(2)) or int(m.group(3)):
                    spills.append(f"{func}: {m.group(2)} bytes spill stores, {m.group(3)} bytes spill loads")
                rows.append([stem, func, "", "", m.group(1), m.group(2), m.group(3)])
            m = re.search(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", line)
            if m and rows and rows[-1][1] == func:
                rows[-1][2] = m.group(1)
                rows[-1][3] = m.group(2) or "0"
    print(f"{'file':<26} {'kernel':<32} {'regs':>5} {'smem':>6} {'stack':>6} {'spill st':>9} {'spill ld':>9}")
    for r in rows:
        print(f"{r[0]:<26} {r[1]:<32} {r[2]:>5} {r[3]:>6} {r[4]:>6} {r[5]:>9} {r[6]:>9}")
    if spills:
        raise SystemExit("register spills or ptxas warnings (sm_90a):\n  " + "\n  ".join(spills))
    print(f"ptxas {PTXAS_ARCH}: {len(rows)} kernels, no spills, no warnings")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "build"
    if cmd == "build":
        for src_dir, ptx_dir in SETS:
            for line in build(ptx_dir, src_dir):
                print(f"{rel(ptx_dir)}/{line}")
    elif cmd == "check":
        check()
    elif cmd == "ptxas":
        ptxas()
    else:
        raise SystemExit(__doc__)

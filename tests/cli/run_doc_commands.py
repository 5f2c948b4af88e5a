#!/usr/bin/env python3
"""Runs the weft command lines of README.md and docs/*.md that need no GPU.

Commands come from ```sh blocks (split at `&&`) and from inline code spans
that start with `weft` or `mpirun`; a span's recipe placeholder R or RECIPE
becomes examples/gpt-tiny.toml, and a span with any other placeholder (NAME,
DIR, ...) is left out. Build steps (deps.sh, meson, ninja, python3) are not
weft commands and are skipped, as are srun (no Slurm here), nccl (needs a
GPU, as does cuda) and mpirun where it is not installed; but a page that shows
an nccl or cuda command while the build has no backend besides `cpu` fails, since no
machine can run it. Every `train` gets
--set run.steps=2 so the whole page set runs in about a minute on 2 cores, and
--overwrite unless it resumes (several examples train into the same runs/ folder).
Each command runs in one scratch folder with examples/ and bench/ linked in,
in document order, so `generate --checkpoint runs/X` finds the run before it.

usage: run_doc_commands.py WEFT_EXE SOURCE_ROOT
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

PLACEHOLDER = re.compile(r"\b[A-Z]{1,}\b")
RECIPE_WORDS = {"R", "RECIPE"}
FAST = ["--set", "run.steps=2", "--set", "log.interval=1"]


def sh_blocks(text):
    """Lines of ```sh blocks, continuation backslashes joined."""
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for segment in line.split("&&"):
                if segment.strip():
                    yield segment.strip(), False


def inline_spans(text):
    for span in re.findall(r"`([^`\n]+)`", text):
        span = span.strip()
        if re.match(r"^(weft|mpirun)\s", span):
            yield span, True


def gpu_backend_built(weft, env):
    """Whether `weft plugins backend` lists a backend other than cpu."""
    out = subprocess.run([weft, "plugins", "backend"], env=env, capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    return any(name not in ("cpu", "(none)") for name in names)


def to_argv(command, inline):
    """The command as argv for this build, or (None, why) when it is left out."""
    words = shlex.split(command)
    if not words or words[0] in ("bash", "meson", "ninja", "python3", "sudo"):
        return None, "not a weft command"
    if words[0] == "srun":
        return None, "needs Slurm"
    if "nccl" in command or "cuda" in command:
        return None, "needs a GPU"
    if words[0] == "mpirun" and not shutil.which("mpirun"):
        return None, "mpirun is not installed"
    if words[0] == "mpirun" and "-H" in words:
        return None, "needs several nodes"
    if inline:
        if any(c in command for c in "[]|"):
            return None, "a synopsis"
        words = ["examples/gpt-tiny.toml" if w in RECIPE_WORDS else w for w in words]
        if any(PLACEHOLDER.search(w) for w in words):
            return None, "has a placeholder"
    try:
        at = next(i for i, w in enumerate(words) if w in ("weft", "./build/weft"))
    except StopIteration:
        return None, "not a weft command"
    sub = words[at + 1] if at + 1 < len(words) else ""
    if sub in ("train", "check", "eval", "generate", "preprocess", "data", "plan", "import") and len(words) <= at + 2:
        return None, "no arguments"
    words[at] = "weft"
    if words[0] == "mpirun":
        extra = ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            extra.append("--allow-run-as-root")
        words = words[:1] + extra + words[1:]
    if sub == "train":
        words += FAST
        # The pages' examples reuse runs/<name>; a user running them one after
        # another starts each over (a fresh run into a used out_dir is refused).
        if not any(w.startswith("--resume") for w in words):
            words.append("--overwrite")
    return words, ""


def main():
    weft, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    pages = [os.path.join(src, "README.md")] + sorted(
        os.path.join(src, "docs", f) for f in os.listdir(os.path.join(src, "docs")) if f.endswith(".md"))
    work = tempfile.mkdtemp(prefix="weft-doc-")
    bindir = os.path.join(work, ".bin")
    os.makedirs(bindir)
    os.symlink(weft, os.path.join(bindir, "weft"))
    for name in ("examples", "bench"):
        os.symlink(os.path.join(src, name), os.path.join(work, name))
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    for var in ("WEFT_PLUGIN_PATH", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "WORLD_SIZE",
                "SLURM_STEP_NUM_TASKS"):
        env.pop(var, None)

    ran, failed, seen = 0, 0, set()
    gpu_backend = gpu_backend_built(weft, env)
    try:
        for page in pages:
            text = open(page, encoding="utf-8").read()
            for command, inline in list(sh_blocks(text)) + list(inline_spans(text)):
                argv, why = to_argv(command, inline)
                rel = os.path.relpath(page, src)
                if argv is None and why == "needs a GPU" and not gpu_backend:
                    failed += 1
                    print(f"FAIL: {rel}: {command}\n    needs a GPU backend, and this build has none besides cpu")
                    continue
                if argv is None:
                    if why != "not a weft command":
                        print(f"skip ({why}): {rel}: {command}")
                    continue
                if tuple(argv) in seen:
                    continue
                seen.add(tuple(argv))
                ran += 1
                try:
                    r = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                       capture_output=True, text=True, errors="replace", timeout=180)
                    rc, err = r.returncode, (r.stderr.strip().splitlines() or [""])[-1]
                except subprocess.TimeoutExpired:
                    rc, err = "timeout", "ran past 180 s"
                if rc == 0:
                    print(f"ok: {rel}: {command}")
                else:
                    failed += 1
                    print(f"FAIL ({rc}): {rel}: {command}\n    {' '.join(argv)}\n    {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{ran} documented commands run, {failed} failed")
    return 1 if failed or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

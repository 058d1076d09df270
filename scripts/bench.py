#!/usr/bin/env python3
"""attrib against PyTorch + transformers, side by side on this machine.

    bench.py MODEL [--tokens 8,64,512] [--reps 3] [--backends ndarray,flex]
             [--attrib target/release/attrib] [--threads N]
             [--device cpu|cuda] [--dtypes f32,bf16]

MODEL is a model folder (config.json, safetensors, tokenizer.json) or a .gguf file (PyTorch
then reads it with transformers' GGUF loader, dequantized). For each prompt length the run
alternates PyTorch (scripts/bench_torch.py) and attrib on each backend, `--reps` times each,
every measurement in a fresh process after one untimed warm-up of each, all in float32 with
the same thread count. It prints the medians: load time, attribution time (forward +
backward), peak resident memory, the ratios attrib / PyTorch, and the achieved GFLOP/s and
GB/s of weight traffic next to this machine's matmul rate measured in the same run.

With `--device cuda` both run on the first GPU (attrib with `--device cuda:0`; build it with
`--features tch,cuda`), in each of `--dtypes` (f32, f16, bf16; PyTorch in the same dtype), and
the table adds the peak GPU memory each process took (NVML, sampled every 10 ms, above what
was in use before it started) and how far attrib's node scores are from PyTorch's (largest
difference over the largest score).

`scripts/bench.sh MODEL` builds attrib (release, ndarray and flex) and runs this with the
reference venv's Python.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Plain English prose to cut prompts from (no repeats within 512 tokens).
TEXT = """The river starts high in the mountains, where snow melts each spring and runs down
through narrow valleys of pine and granite. Farmers in the lower plains have used its water for
centuries, building channels that carry it to fields of wheat, barley and rice. In the old town
at the river's mouth, merchants once traded salt, wool and copper with ships that came from
across the sea. The harbour is quieter now, but fishing boats still leave before dawn and
return in the afternoon with their catch. Visitors walk along the stone embankment, stop at
the small museum of maritime history, and climb the hill to the ruined fortress, from which
on a clear day one can see the islands forty kilometres away. Scientists who study the river
measure its flow at twelve stations, record the temperature of the water every hour, and count
the salmon that swim upstream in autumn. Their data show that the glaciers feeding the river
have lost almost a third of their mass since 1950, and that the spring floods arrive two weeks
earlier than they did a century ago. The regional government has responded with a plan to
store more water in reservoirs, to repair the oldest irrigation canals, and to pay farmers who
switch to crops that need less water. Not everyone agrees with the plan: some villages fear
that new dams will flood their pastures, while environmental groups argue that the money
would be better spent restoring wetlands, which hold water like a sponge and release it slowly
through the dry summer months. A public hearing last year drew more than two thousand people,
and the debate continued late into the night. Teachers brought their students, engineers
presented maps and models, and an elderly shepherd described how the meadows of his childhood
had turned to dust. In the end the council voted to fund both reservoirs and wetlands, and to
review the results in ten years. Meanwhile, life along the river goes on. Children learn to
swim in its shallow bends, painters set up their easels on its banks, and every summer the
town holds a festival with music, boat races and a market selling cheese, honey and bread
baked in wood-fired ovens. At night, lanterns float down the current in memory of those who
were lost to the great flood of 1887, when the water rose six metres in a single day and swept
away the wooden bridge that had stood for two hundred years. The stone bridge that replaced it
still carries traffic today, although engineers warn that its foundations need attention.
Historians have collected letters, photographs and diaries from that time, and the library
keeps them in a climate-controlled room open to researchers by appointment. One diary, written
by a young schoolteacher, describes the evening before the flood: heavy clouds over the
mountains, a strange warm wind, and dogs barking across the valley for no reason anyone could
see. She wrote that her father, a miller, moved his sacks of flour to the upper floor just in
case, and that the neighbours laughed at him. By the next morning the mill was under water,
but the flour was dry, and the family fed half the village for a week. Her granddaughter
donated the diary to the library in 1962, together with a drawing of the mill as it looked
before the flood, with its great wheel turning in the current and swallows nesting under the
eaves. Today the site of the mill is a small park with benches, a fountain and a plaque that
tells the story in three languages."""


def prompt_of(tokenizer, n):
    """Text that the tokenizer turns into exactly n tokens (a prefix of TEXT)."""
    ids = tokenizer(TEXT)["input_ids"]
    if len(ids) < n:
        sys.exit(f"the built-in text has only {len(ids)} tokens; ask for at most that many")
    for cut in range(n, n + 8):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer(text)["input_ids"]) == n:
            return text
    sys.exit(f"cannot make a prompt of exactly {n} tokens")


TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


class GpuMemory:
    """The peak of GPU 0's used memory while a process runs, above what was used before."""

    def __init__(self):
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.used = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used
        except Exception:  # no NVML bindings: ask nvidia-smi
            def used():
                out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True).stdout
                return int(out.split()[0]) * 2**20
            self.used = used

    def watch(self, proc):
        base = self.used()
        peak = [base]

        def poll():
            while proc.poll() is None:
                peak[0] = max(peak[0], self.used())
                time.sleep(0.01)
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return lambda: (thread.join(), peak[0] - base)[1]


GPU = None


class RunFailed(Exception):
    """A measured process exited non-zero; the message ends with its stderr."""


def run(cmd, env=None):
    """Runs cmd; returns its stdout, its own peak RSS in bytes, and the peak GPU memory it
    took (0 unless a GPU is watched). Raises RunFailed if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        gpu = GPU.watch(proc) if GPU else None
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        gpu_bytes = gpu() if gpu else 0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RunFailed(f"{cmd[0]} failed ({proc.returncode}):\n"
                            f"{err.read().decode()[-2000:]}")
        return out.read().decode(), usage.ru_maxrss * 1024, gpu_bytes


def cli(main):
    """Runs a script's main; a measured process that failed ends it with its message."""
    try:
        main()
    except RunFailed as e:
        sys.exit(str(e))


def torch_json(*args):
    """scripts/bench_torch.py's JSON line for `args` (a fresh process), its peak RSS and the
    GPU memory it took."""
    stdout, rss, gpu = run([sys.executable, os.path.join(HERE, "bench_torch.py"),
                            *map(str, args)])
    return json.loads(stdout.strip().splitlines()[-1]), rss, gpu


def attrib_json(binary, model, prompt, threads, flags=()):
    """attrib's JSON for `prompt` with `flags` (a fresh process with `threads` threads, its
    files written to a scratch folder), its peak RSS and the GPU memory it took."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads),
                   MATMUL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        stdout, rss, gpu = run([binary, "--model", model, "--prompt", prompt, "--out", out,
                                "--json", *flags], env)
    return json.loads(stdout), rss, gpu


def torch_run(model, prompt_file, threads, device="cpu", dtype="f32"):
    r, rss, gpu = torch_json(model, prompt_file, threads, device, TORCH_DTYPES[dtype])
    return {"load": r["load_s"], "attr": r["forward_s"] + r["backward_s"], "rss": rss,
            "gpu": gpu, "tokens": r["tokens"], "nodes": r["nodes"]}


def attrib_run(binary, model, prompt, backend, threads, device="cpu", dtype="f32"):
    flags = ["--backend", backend]
    if device != "cpu":
        flags += ["--device", f"{device}:0", "--dtype", dtype]
    r, rss, gpu = attrib_json(binary, model, prompt, threads, flags)
    t = r["timings"]
    return {"load": t["load_s"], "attr": t["forward_s"] + t["backward_s"], "rss": rss,
            "gpu": gpu, "tokens": len(r["input_ids"]),
            "nodes": [n["score"] for n in r["nodes"]]}


def weight_files(model):
    """The model's weight files: a folder's safetensors, or the GGUF file itself."""
    if os.path.isdir(model):
        return [os.path.join(model, f) for f in sorted(os.listdir(model))
                if f.endswith(".safetensors")]
    return [model]


def warm_page_cache(model):
    """Reads the model's weight files through, so that every measurement starts with them in
    the page cache: a run that maps the weights (attrib on flex) would otherwise pay for any
    pages that an earlier, larger process pushed out, and one that copies them (PyTorch) would
    pay it in its load time."""
    for path in weight_files(model):
        with open(path, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def reread_from_disk(model):
    """Drops the weight files from the page cache and reads them back, once, before the first
    measurement. How a file sits in the cache depends on how it got there: read from disk,
    Linux 6.x caches it in folios of up to 2 MB; written by the process that made it, in 4 KB
    pages. Every mapping of it then costs page-table work in proportion (in one comparison,
    about 0.1 s of a 64-token forward pass of the 1.5B model on flex, from the weights' first
    touch), so without this a run's numbers would depend on the file's history."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in weight_files(model):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    warm_page_cache(model)


def model_size(model):
    """(FLOPs of forward + backward at T tokens as a function, weight bytes read per pass)."""
    if model.endswith(".gguf"):
        from transformers import AutoConfig
        c = AutoConfig.from_pretrained(os.path.dirname(model) or ".",
                                       gguf_file=os.path.basename(model)).to_dict()
    else:
        with open(os.path.join(model, "config.json")) as f:
            c = json.load(f)
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    vocab = c["vocab_size"]
    kv_dim = h // heads * kv
    per_layer = h * h + 2 * h * kv_dim + h * h + 3 * h * inter
    linear = layers * per_layer

    def flops(t):
        # Forward: every linear once, attention scores and mixing (QKᵀ and AV), the LM head
        # at one position. Backward (no weight gradients): one product per linear for the
        # input gradient, two per attention product.
        attn = layers * 2 * 2 * t * t * h
        head = 2 * h * vocab
        forward = 2 * t * linear + attn + head
        return forward + (2 * t * linear + 2 * attn + head)

    # Weights read in the forward and again in the backward, per byte of the dtype.
    traffic = 2 * (linear + h * vocab)
    return flops, traffic


def bench_args(doc, tokens, reps):
    """The arguments every side-by-side script takes: MODEL, --tokens, --reps, --attrib,
    --threads (add the script's own before parsing)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", default=tokens)
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--attrib", default=os.path.join(ROOT, "target/release/attrib"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    return ap


def tokenizer_of(model):
    """The model's tokenizer: a folder's, or the one a GGUF file holds (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    if model.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(model),
                                             gguf_file=os.path.basename(model))
    return AutoTokenizer.from_pretrained(model)


def main():
    global GPU
    ap = bench_args(__doc__, "8,64,512", 3)
    ap.add_argument("--backends", default="ndarray,flex")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtypes", default="f32")
    args = ap.parse_args()
    model = os.path.abspath(args.model)
    lengths = [int(x) for x in args.tokens.split(",")]
    backends = args.backends.split(",")
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in TORCH_DTYPES:
            sys.exit(f"--dtypes: {d!r} is not one of {', '.join(TORCH_DTYPES)}")
    if args.device == "cpu" and dtypes != ["f32"]:
        sys.exit("--dtypes other than f32 need --device cuda")
    gpu = args.device == "cuda"
    if gpu:
        GPU = GpuMemory()

    tokenizer = tokenizer_of(model)
    flops, traffic = model_size(model)

    peaks = {d: torch_json("--matmul", args.threads, args.device, TORCH_DTYPES[d])[0]
             ["matmul_gflops"] for d in dtypes}
    # A system is (name, dtype); with one dtype the names are as on the CPU table.
    systems = [(s, d) for d in dtypes for s in ["pytorch"] + [f"attrib {b}" for b in backends]]

    def label(system):
        return system[0] if dtypes == ["f32"] else f"{system[0]} {system[1]}"

    print(f"model {model}\ndevice {args.device} · threads {args.threads} · {args.reps} reps "
          f"each, medians · matmul rate (torch.mm): " +
          ", ".join(f"{d} {peaks[d]:.1f} GFLOP/s" for d in dtypes), flush=True)

    reread_from_disk(model)
    results = {}
    failed = {}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = {}
        for n in lengths:
            prompts[n] = prompt_of(tokenizer, n)
            with open(os.path.join(tmp, f"{n}.txt"), "w", encoding="utf-8") as f:
                f.write(prompts[n])

        def measure(system, n):
            warm_page_cache(model)
            name, dtype = system
            if name == "pytorch":
                r = torch_run(model, os.path.join(tmp, f"{n}.txt"), args.threads, args.device,
                              dtype)
            else:
                r = attrib_run(args.attrib, model, prompts[n], name.split()[1], args.threads,
                               args.device, dtype)
            if r["tokens"] != n:
                sys.exit(f"{label(system)} saw {r['tokens']} tokens, not {n}")
            return r

        def attempt(system, n):
            """One measurement; on a GPU a system that fails is reported and skipped."""
            if system in failed:
                return None
            try:
                return measure(system, n)
            except RunFailed as e:
                if not gpu:
                    raise
                failed[system] = str(e).strip().splitlines()[-1]
                print(f"  {label(system)} failed: {e}", flush=True)
                return None

        def stop(_signum, _frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` signals the group too
            raise KeyboardInterrupt

        # Stopped (Ctrl-C, or SIGTERM from a time limit), it still prints the table of what
        # it measured.
        signal.signal(signal.SIGTERM, stop)
        try:
            for system in systems:  # warm-up: page cache, lazy initialisation
                attempt(system, lengths[0])
            for n in lengths:
                for _ in range(args.reps):
                    for system in systems:
                        r = attempt(system, n)
                        if r is None:
                            continue
                        results.setdefault((system, n), []).append(r)
                        memory = f"  GPU {r['gpu'] / 2**30:6.2f} GiB" if gpu else ""
                        print(f"  {n:4} tokens  {label(system):20} load {r['load']:7.2f} s  "
                              f"attribution {r['attr']:8.3f} s  "
                              f"peak RSS {r['rss'] / 2**30:6.2f} GiB{memory}", flush=True)
        except KeyboardInterrupt:
            print("\nstopped early: the table holds what was measured", flush=True)

    def med(system, n, key):
        return statistics.median(r[key] for r in results[(system, n)])

    def node_error(system, n):
        """The largest difference of attrib's node scores from PyTorch's (same dtype, last
        measurement of each), over PyTorch's largest score."""
        want = results[(("pytorch", system[1]), n)][-1]["nodes"]
        got = results[(system, n)][-1]["nodes"]
        if len(got) != len(want):
            return "—"
        return f"{max(abs(g - w) for g, w in zip(got, want)) / max(want):.1e}"

    keys = ("load", "attr", "rss") + (("gpu",) if gpu else ())
    print()
    print("| tokens | system | load s | attribution s | peak RSS GiB | " +
          ("peak GPU GiB | " if gpu else "") +
          "load ÷ PyTorch | attribution ÷ PyTorch | " +
          ("GPU memory ÷ PyTorch | node scores vs PyTorch | " if gpu else "RSS ÷ PyTorch | ") +
          "GFLOP/s | weight GB/s |")
    print("|---:|---|" + "---:|" * (8 + 2 * gpu))
    for n in lengths:
        for system in systems:
            if (system, n) not in results:
                continue
            m = {k: med(system, n, k) for k in keys}
            base_system = ("pytorch", system[1])
            if system[0] == "pytorch" or (base_system, n) not in results:
                ratio = " | ".join("—" for _ in range(3 + gpu))
            else:
                base = {k: med(base_system, n, k) for k in keys}
                parts = [m["load"] / base["load"], m["attr"] / base["attr"]]
                parts.append(m["gpu"] / base["gpu"] if gpu else m["rss"] / base["rss"])
                ratio = " | ".join(f"{x:.2f}" for x in parts)
                if gpu:
                    ratio += f" | {node_error(system, n)}"
            width = 4 if system[1] == "f32" else 2
            memory = f"{m['gpu'] / 2**30:.2f} | " if gpu else ""
            print(f"| {n} | {label(system)} | {m['load']:.2f} | {m['attr']:.3f} | "
                  f"{m['rss'] / 2**30:.2f} | {memory}{ratio} | "
                  f"{flops(n) / m['attr'] / 1e9:.1f} | {width * traffic / m['attr'] / 1e9:.1f} |")
    where = f"{args.device}" if gpu else f"f32, {args.threads} threads"
    print(f"\nmatmul rate (torch.mm, {where}): " +
          ", ".join(f"{d} {peaks[d]:.1f} GFLOP/s" for d in dtypes))
    for system, why in failed.items():
        print(f"{label(system)} failed: {why}")


if __name__ == "__main__":
    cli(main)
